package hub

import (
	"context"
	"slices"
	"sync"
)

// Conn is one client connection in the hub. Frames sent to it go through a
// bounded queue to a writer goroutine that runs only while there is work.
type Conn struct {
	ID   string // connection id (uuid), safe to log
	User string // authenticated user id
	Tag  string // opaque label set by the owner (a session hash)

	t   Transport
	hub *Hub

	mu           sync.Mutex
	queue        [][]byte // frames waiting for the writer; guarded by mu
	backlog      [][]byte // frames a resume put before queue, outside its limits; guarded by mu
	backlogBytes int      // bytes in backlog; guarded by mu
	pending      int      // bytes in queue; guarded by mu
	writing      bool     // a writer goroutine runs; guarded by mu
	closeCode    int      // non-zero once a close was requested; guarded by mu
	reason       string   // close reason; guarded by mu
	closed       bool     // no more frames are accepted; guarded by mu
	removed      bool     // Remove ran; guarded by mu
	channels     []string // subscribed channels; guarded by mu
	// buffering holds, per channel being resumed, the live frames that
	// arrive until Resume; nil when no resume is under way. skip holds, per
	// channel just resumed, which live frames the resume already sent, until
	// a newer one arrives. Both guarded by mu.
	buffering map[string][]Frame
	skip      map[string]func(id string) bool
	done      chan struct{} // closed once the transport is closed
	doneOnce  sync.Once
}

// Done is closed once c's socket has been closed, by a finished closing
// handshake or by dropping it.
func (c *Conn) Done() <-chan struct{} { return c.done }

// shut closes the transport (with a handshake when graceful) and marks c
// done. It blocks while the handshake runs.
func (c *Conn) shut(graceful bool, code int, reason string) {
	if graceful {
		c.t.Close(code, reason)
	} else {
		c.t.CloseNow()
	}
	c.doneOnce.Do(func() { close(c.done) })
}

func (c *Conn) has(channel string) bool  { return c.index(channel) >= 0 }
func (c *Conn) index(channel string) int { return slices.Index(c.channels, channel) }

// Frame is an event frame with its id, as held while a resume is under way.
type Frame struct {
	ID    string
	Frame []byte
}

// Send queues frame for c and reports whether it was taken. It never blocks.
// A frame that would overflow the queue is refused and c is closed with
// CloseSlowConsumer; frames queued before it are dropped.
func (c *Conn) Send(frame []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sendLocked(frame)
}

// deliver queues an event frame of channel, or holds it back while the
// channel is being resumed.
func (c *Conn) deliver(channel, id string, frame []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if seen, ok := c.skip[channel]; ok {
		if seen(id) {
			return false
		}
		delete(c.skip, channel)
	}
	if buf, ok := c.buffering[channel]; ok && !c.closed && c.closeCode == 0 {
		if len(buf) >= c.hub.cfg.QueueLen {
			c.overflowLocked()
			return false
		}
		c.buffering[channel] = append(buf, Frame{ID: id, Frame: frame})
		return true
	}
	return c.sendLocked(frame)
}

// Resume ends the resume of channel begun by Hub.SubscribeResume: it
// queues first (typically the reply announcing the resume, may be nil),
// then the missed frames, then the live frames held back meanwhile except
// those for which seen returns true (already among the missed ones). Live
// frames arriving afterwards are dropped while seen holds for them (pub/sub
// can lag behind the history read) and queued as usual from the first one
// it does not, so the client gets every frame once, in order.
func (c *Conn) Resume(channel string, first []byte, missed []Frame, seen func(id string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	held := c.buffering[channel]
	delete(c.buffering, channel)
	if len(c.buffering) == 0 {
		c.buffering = nil
	}
	if c.closed || c.closeCode != 0 {
		return
	}
	// The reply and the missed frames go to the backlog, written before the
	// queue and outside its limits: a long gap (bounded by the history
	// window) must not make the resume itself a slow consumer. Only one
	// large resume may wait at a time: a client stacking them is slow.
	if c.backlogBytes > c.hub.cfg.QueueBytes {
		c.overflowLocked()
		return
	}
	if first != nil {
		c.backlog = append(c.backlog, first)
		c.backlogBytes += len(first)
	}
	for _, f := range missed {
		c.backlog = append(c.backlog, f.Frame)
		c.backlogBytes += len(f.Frame)
	}
	c.startWriterLocked()
	for _, f := range held {
		if !seen(f.ID) && !c.sendLocked(f.Frame) {
			return
		}
	}
	// Pub/sub may still bring frames the client already has (from the
	// history read, or from before its since): drop them until the first
	// newer one.
	if c.skip == nil {
		c.skip = make(map[string]func(string) bool)
	}
	c.skip[channel] = seen
}

func (c *Conn) sendLocked(frame []byte) bool {
	cfg := &c.hub.cfg
	if c.closed || c.closeCode != 0 {
		return false
	}
	if c.pending+len(frame) > cfg.QueueBytes || len(c.queue) >= cfg.QueueLen {
		c.overflowLocked()
		return false
	}
	c.queue = append(c.queue, frame)
	c.pending += len(frame)
	c.startWriterLocked()
	return true
}

// Close asks for c to be closed with code after the frames already queued
// are written. It returns at once; the closing handshake runs on c's writer
// goroutine. Only the first close request counts.
func (c *Conn) Close(code int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.requestCloseLocked(code, reason)
}

// Closing reports whether a close of c was requested or has happened.
func (c *Conn) Closing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed || c.closeCode != 0
}

// overflowLocked drops c's queue and closes it with CloseSlowConsumer on a
// goroutine of its own: the writer may be stuck on the very socket that
// cannot keep up, and closing the transport is what unblocks it.
func (c *Conn) overflowLocked() {
	c.queue, c.backlog, c.pending, c.backlogBytes, c.buffering = nil, nil, 0, 0, nil
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

func (c *Conn) requestCloseLocked(code int, reason string) {
	if c.closeCode != 0 {
		return
	}
	c.closeCode, c.reason = code, reason
	c.startWriterLocked()
}

func (c *Conn) startWriterLocked() {
	if c.writing {
		return
	}
	c.writing = true
	c.hub.wg.Add(1)
	go c.writeLoop()
}

// writeLoop writes queued frames until the queue is empty, then performs a
// requested close, then exits. Any write error drops the socket: the owner's
// read loop then fails and calls Remove.
func (c *Conn) writeLoop() {
	h := c.hub
	defer h.wg.Done()
	var batch [][]byte
	for {
		c.mu.Lock()
		if len(c.backlog) > 0 {
			batch = append(c.backlog, c.queue...)
			c.backlog, c.queue, c.backlogBytes = nil, nil, 0
		} else {
			batch, c.queue = c.queue, batch[:0]
		}
		c.pending = 0
		if len(batch) == 0 {
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
		if !c.writeBatch(batch) {
			c.fail()
			return
		}
	}
}

// framesPerDeadline is how many frames share one write deadline: a fresh
// context per frame would cost four allocations per frame per recipient.
const framesPerDeadline = 32

// writeBatch writes frames in order and reports whether all went out. Each
// group of framesPerDeadline frames shares one WriteTimeout deadline.
func (c *Conn) writeBatch(batch [][]byte) bool {
	h := c.hub
	for start := 0; start < len(batch); start += framesPerDeadline {
		ctx, cancel := context.WithTimeout(h.ctx, h.cfg.WriteTimeout)
		for i := start; i < min(start+framesPerDeadline, len(batch)); i++ {
			err := c.t.Write(ctx, batch[i])
			batch[i] = nil
			if err != nil {
				cancel()
				return false
			}
		}
		cancel()
	}
	return true
}

// fail drops the socket after a failed write or ping.
func (c *Conn) fail() {
	c.mu.Lock()
	c.closed = true
	c.queue, c.backlog, c.pending, c.backlogBytes = nil, nil, 0, 0
	c.writing = false
	c.mu.Unlock()
	c.shut(false, 0, "")
}

// ping sends a WebSocket ping and drops c when no pong comes in time.
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
		c.mu.Lock()
		c.closed = true
		c.queue, c.backlog, c.pending, c.backlogBytes = nil, nil, 0, 0
		c.mu.Unlock()
		c.shut(false, 0, "")
	}
}
