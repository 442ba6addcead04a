package hub

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald/internal/events"
)

// Conn is one client connection in the hub. Frames sent to it go through a
// bounded queue to a writer goroutine that runs only while there is work.
type Conn struct {
	ID   string // connection id (uuid), safe to log
	User string // authenticated user id
	Tag  string // opaque label set by the owner (a session hash)

	t   Transport
	hub *Hub

	mu sync.Mutex
	// queue holds the frames waiting for the writer, in order; flight the
	// ones it is writing now (read-only while it does). Frames of a join's
	// reply and replay are queued outside the limits (extra counts their
	// bytes); the others count in bytes and frames. All guarded by mu.
	queue, flight [][]byte
	bytes, frames int
	extra         int
	oldest        int64         // publish time (unix ms) of the oldest live event frame in queue, 0 for none; guarded by mu
	writing       bool          // a writer goroutine runs; guarded by mu
	closeCode     int           // non-zero once a close was requested; guarded by mu
	reason        string        // close reason; guarded by mu
	closed        bool          // no more frames are accepted; guarded by mu
	removed       bool          // Remove ran; guarded by mu
	subs          []sub         // subscribed channels; guarded by mu
	done          chan struct{} // made by the first Done; guarded by mu
	shutDone      bool          // the transport is closed; guarded by mu

	// writeStart is when the socket write in progress began (Unix ns), 0
	// between writes.
	writeStart atomic.Int64
}

// sub is one channel of a connection. While a join is under way (holding)
// the channel's live frames wait in held. After a join, skip is the newest
// id the join gave the client: live frames at or below it (pub/sub lagging
// behind a history read) are dropped until a newer one arrives.
type sub struct {
	channel string
	holding bool
	held    []heldFrame
	skip    string
}

type heldFrame struct {
	id    string
	frame []byte
}

// Done is closed once c's socket has been closed, by a finished closing
// handshake or by dropping it.
func (c *Conn) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil { // made on demand: most connections never ask
		c.done = make(chan struct{})
		if c.shutDone {
			close(c.done)
		}
	}
	return c.done
}

// shut closes the transport (with a handshake when graceful) and marks c
// done. It blocks while the handshake runs.
func (c *Conn) shut(graceful bool, code int, reason string) {
	if graceful {
		c.t.Close(code, reason)
	} else {
		c.t.CloseNow()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.shutDone {
		c.shutDone = true
		if c.done != nil {
			close(c.done)
		}
	}
}

// subLocked returns c's subscription of channel, or nil.
func (c *Conn) subLocked(channel string) *sub {
	for i := range c.subs {
		if c.subs[i].channel == channel {
			return &c.subs[i]
		}
	}
	return nil
}

// forget removes channel from c's subscriptions, with what was held or
// skipped for it; it reports whether c had it.
func (c *Conn) forget(channel string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.IndexFunc(c.subs, func(s sub) bool { return s.channel == channel })
	if i < 0 {
		return false
	}
	c.subs = slices.Delete(c.subs, i, i+1)
	if len(c.subs) == 0 {
		c.subs = nil
	}
	return true
}

// open reports whether frames are still accepted. c.mu must be held.
func (c *Conn) openLocked() bool { return !c.closed && c.closeCode == 0 }

// Send queues frame for c and reports whether it was taken. It never blocks.
// A frame that would overflow the queue (Config) is refused and c is closed
// with CloseSlowConsumer; frames queued before it are dropped.
func (c *Conn) Send(frame []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sendLocked(frame)
}

// deliver queues an event frame of channel, published at ms (unix ms, 0
// when unknown), or holds it back while the channel is being joined.
func (c *Conn) deliver(channel, id string, ms int64, frame []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.subLocked(channel)
	if s == nil { // left meanwhile
		return false
	}
	if s.skip != "" {
		if events.CompareIDs(id, s.skip) <= 0 {
			return false
		}
		s.skip = ""
	}
	if s.holding && c.openLocked() {
		if len(s.held) >= c.hub.cfg.QueueLen {
			c.overflowLocked()
			return false
		}
		s.held = append(s.held, heldFrame{id, frame})
		return true
	}
	if !c.sendLocked(frame) {
		return false
	}
	c.stampLocked(ms)
	return true
}

// stampLocked notes that a live event frame published at ms was queued,
// for the publish→write latency reported to OnWrite.
func (c *Conn) stampLocked(ms int64) {
	if ms > 0 && (c.oldest == 0 || ms < c.oldest) {
		c.oldest = ms
	}
}

// release ends the hold of channel begun by Join: it queues first (the
// reply announcing the subscription), then the replayed events, then the
// live frames held meanwhile that come after last, so the client gets
// every event once, in order. Live frames arriving afterwards at or below
// last are dropped (see skip). Nothing is queued when c left the channel
// meanwhile.
func (c *Conn) release(channel string, first []byte, replay []events.Entry, last string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.subLocked(channel)
	if s == nil || !s.holding {
		return
	}
	held := s.held
	s.holding, s.held = false, nil
	if !c.openLocked() {
		return
	}
	// The reply and the replay are queued outside the queue's limits: a
	// long gap (bounded by the history window) must not make the join
	// itself a slow consumer. Only one large replay may wait at a time: a
	// client stacking them is slow.
	if c.extra > c.hub.cfg.QueueBytes {
		c.overflowLocked()
		return
	}
	if first != nil {
		c.queueExtraLocked(first)
	}
	for _, e := range replay {
		c.queueExtraLocked(e.Frame)
	}
	for _, f := range held {
		if events.CompareIDs(f.id, last) <= 0 {
			continue
		}
		if !c.sendLocked(f.frame) {
			return
		}
		c.stampLocked(publishedMS(f.id))
	}
	s.skip = last
}

func (c *Conn) queueExtraLocked(frame []byte) {
	c.queue = append(c.queue, frame)
	c.extra += len(frame)
	c.startWriterLocked()
}

// queuedNewestLocked returns the newer of since and the newest id of an
// event of channel still queued or being written to c.
func (c *Conn) queuedNewestLocked(channel, since string) string {
	head := `{"type":"event","channel":"` + channel + `","id":"`
	for _, q := range [][][]byte{c.flight, c.queue} {
		for _, f := range q {
			if !bytes.HasPrefix(f, []byte(head)) {
				continue
			}
			if id, ok := events.FrameID(f); ok && events.CompareIDs(id, since) > 0 {
				since = id
			}
		}
	}
	return since
}

func (c *Conn) sendLocked(frame []byte) bool {
	cfg := &c.hub.cfg
	if !c.openLocked() {
		return false
	}
	// Past QueueLen only a socket that does not take what is written is
	// slow; one waiting for a busy server gets a longer queue, written as
	// one larger batch. QueueBytes bounds the memory either way.
	if c.bytes+len(frame) > cfg.QueueBytes || c.frames >= cfg.QueueLen && c.writeBlocked() {
		c.overflowLocked()
		return false
	}
	c.queue = append(c.queue, frame)
	c.bytes += len(frame)
	c.frames++
	c.startWriterLocked()
	return true
}

// dropQueueLocked forgets everything queued and held, giving the memory
// back.
func (c *Conn) dropQueueLocked() {
	c.queue, c.bytes, c.frames, c.extra, c.oldest = nil, 0, 0, 0, 0
	for i := range c.subs {
		c.subs[i].held = nil
	}
}

// Close asks for c to be closed with code after the frames already queued
// are written. It returns at once; the closing handshake runs on c's writer
// goroutine. Only the first close request counts.
func (c *Conn) Close(code int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.closeCode != 0 {
		return
	}
	c.closeCode, c.reason = code, reason
	c.startWriterLocked()
}

// Closing reports whether a close of c was requested or has happened.
func (c *Conn) Closing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.openLocked()
}

// overflowLocked drops c's queue and closes it with CloseSlowConsumer on a
// goroutine of its own: the writer may be stuck on the very socket that
// cannot keep up, and closing the transport is what unblocks it.
func (c *Conn) overflowLocked() {
	c.dropQueueLocked()
	c.closeCode, c.reason = CloseSlowConsumer, "slow consumer"
	c.closed = true
	h := c.hub
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.cfg.OnClose(CloseSlowConsumer)
		c.shut(true, CloseSlowConsumer, "slow consumer")
	}()
}

func (c *Conn) startWriterLocked() {
	if c.writing {
		return
	}
	c.writing = true
	c.hub.wg.Add(1)
	go c.writeLoop()
}

// writeBlocked reports whether c's writer has been inside one socket write
// for SlowWrite or longer: the peer is not taking what is sent.
func (c *Conn) writeBlocked() bool {
	start := c.writeStart.Load()
	return start != 0 && time.Since(time.Unix(0, start)) >= c.hub.cfg.SlowWrite
}

// writeLoop writes queued frames until the queue is empty, then performs a
// requested close, then exits. Any write error drops the socket: the owner's
// read loop then fails and calls Remove.
func (c *Conn) writeLoop() {
	h := c.hub
	defer h.wg.Done()
	for {
		c.mu.Lock()
		batch, oldest := c.queue, c.oldest
		c.queue, c.flight, c.bytes, c.frames, c.extra, c.oldest = nil, batch, 0, 0, 0, 0
		if len(batch) == 0 {
			c.flight = nil
			code, reason := c.closeCode, c.reason
			if code == 0 || c.closed {
				c.writing = false
				c.mu.Unlock()
				return
			}
			c.closed = true
			c.mu.Unlock()
			h.cfg.OnClose(code)
			c.shut(true, code, reason)
			c.mu.Lock()
			c.writing = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		err := c.writeBatch(batch)
		if err == nil {
			h.cfg.OnWrite(Write{Frames: len(batch), Oldest: oldest})
		}
		c.mu.Lock()
		c.flight = nil
		if err != nil {
			c.writing = false
		}
		c.mu.Unlock()
		if err != nil {
			code := CloseAbnormal
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
				code = CloseSlowConsumer // the write waited WriteTimeout for the peer
			}
			c.drop(code)
			return
		}
	}
}

// writeBatch writes frames in order: in chunks of up to MaxWriteBytes, each
// one Transport.Write (one message on a WebSocket: a backlog costs a few
// writes, not one per frame) under one WriteTimeout deadline.
func (c *Conn) writeBatch(batch [][]byte) error {
	h := c.hub
	defer c.writeStart.Store(0)
	for start := 0; start < len(batch); {
		end, n := start+1, len(batch[start])
		for end < len(batch) && n+len(batch[end]) < MaxWriteBytes {
			n += len(batch[end]) + 1
			end++
		}
		// A deadline, not a context: a context with a timeout costs a
		// timer set and stopped per write (4 % of the gateway's CPU at 20k
		// personal events/s), and one derived from h.ctx registers on its
		// one mutex, which every writer then queued for (under overload,
		// nine tenths of the writers' blocked time in a runtime trace).
		// Close aborts writes by closing the sockets instead.
		now := time.Now()
		c.writeStart.Store(now.UnixNano())
		if err := c.t.Write(now.Add(h.cfg.WriteTimeout), batch[start:end]); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// drop drops the socket at once after a failed write or an unanswered
// ping, counting it with code (CloseAbnormal, or CloseSlowConsumer for a
// write that timed out) unless it was already closing.
func (c *Conn) drop(code int) {
	c.mu.Lock()
	count := !c.closed
	c.closed = true
	c.dropQueueLocked()
	c.mu.Unlock()
	if count && c.hub.ctx.Err() == nil {
		c.hub.cfg.OnClose(code)
	}
	c.shut(false, 0, "")
}

// ping sends a WebSocket ping and drops c when no pong comes in time: as
// a slow consumer when its writer is blocked too (the peer is there but
// not reading), else as a dead peer.
func (c *Conn) ping() {
	if c.Closing() {
		return
	}
	h := c.hub
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.PingTimeout)
	defer cancel()
	if err := c.t.Ping(ctx); err != nil && h.ctx.Err() == nil {
		if !c.Closing() {
			h.log.Debug("reaping unresponsive connection", "conn", c.ID, "err", err)
		}
		code := CloseAbnormal
		if c.writeBlocked() {
			code = CloseSlowConsumer
		}
		c.drop(code)
	}
}
