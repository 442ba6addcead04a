// Package hub keeps this replica's client connections and fans events out to
// them. It knows channels, connections and bytes, nothing of Redis, HTTP or
// sessions.
//
// The hub owns subscriptions: a connection joins a channel through Join,
// which registers it, takes one reference on the event source (Source) for
// the pair, learns the channel's last id or reads what the connection
// missed, and releases the held-back live frames, as one operation. Leave
// and Remove give the reference back. No caller keeps a count in step.
//
// Fan-out encodes nothing: Broadcast hands the same frame bytes to every
// subscriber's bounded send queue under a shard read lock and returns. A
// connection's writer goroutine exists only while its queue has work, so an
// idle connection costs no goroutine here. A queue that overflows closes
// its connection with CloseSlowConsumer, asynchronously, without slowing any
// other connection.
//
// Lock order: shard.mu before Conn.mu; never the reverse. Source calls are
// made without any hub lock held.
package hub

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald/internal/events"
)

// Close codes the hub itself uses (PROTOCOL §4).
const (
	CloseNormal        = 1000
	CloseGoingAway     = 1001
	CloseAbnormal      = 1006 // no close frame: a dead peer reaped, a failed write
	ClosePolicy        = 1008
	CloseRestart       = 1012
	CloseTryAgain      = 1013
	CloseRevoked       = 4001
	CloseRateLimited   = 4008
	CloseSlowConsumer  = 4009
	numShards          = 64
	defaultQueueBytes  = 1 << 20
	defaultQueueLen    = 1024
	defaultWriteTimout = 10 * time.Second
	defaultPing        = 25 * time.Second
	defaultPingTimeout = 10 * time.Second
	defaultMaxSubs     = 128
	defaultSlowWrite   = time.Second
	maxParallelPings   = 256
)

// MaxWriteBytes bounds the frames of one Transport.Write: one WebSocket
// message, one write deadline.
const MaxWriteBytes = 16 << 10

// Errors returned by the hub.
var (
	ErrDraining        = errors.New("hub: draining")
	ErrClosed          = errors.New("hub: connection closed")
	ErrTooManyChannels = errors.New("hub: too many subscriptions")
	// ErrForbidden is returned by Join when the channel's history belongs
	// to another user (an owned effect).
	ErrForbidden = errors.New("hub: channel belongs to another user")
)

// Transport is the socket under a connection. Write sends frames, in
// order, and fails with an error wrapping os.ErrDeadlineExceeded (or
// context.DeadlineExceeded) if the peer has not taken them by deadline; a
// transport may carry several in one message (a WebSocket text message holds them
// separated by "\n": frames never contain a line break). The hub passes at
// most MaxWriteBytes per call, unless a single frame is larger. Close
// performs a closing handshake and may block for a few seconds; CloseNow
// drops the socket at once.
type Transport interface {
	Write(deadline time.Time, frames [][]byte) error
	Ping(ctx context.Context) error
	Close(code int, reason string) error
	CloseNow() error
}

// Source is the event bus as the hub uses it (a broker.Broker satisfies
// it). The hub holds one reference per (connection, channel) pair it
// delivers to.
type Source interface {
	// Subscribe adds a reference to channel and returns once every event
	// after Last(channel) will be handed to Broadcast.
	Subscribe(ctx context.Context, channels ...string) error
	// Unsubscribe drops a reference. It must not block.
	Unsubscribe(channels ...string)
	// Last returns an id such that every event after it reaches Broadcast
	// after Last returned (or is reaching it now).
	Last(channel string) string
	// History returns the events after since, whether none is missing, and
	// the channel's owner.
	History(ctx context.Context, channel, since string) (events.Replay, error)
}

// Config tunes a Hub. Zero fields take the defaults in their comments.
//
// A connection is a slow consumer, closed with CloseSlowConsumer (4009),
// when its pending frames would pass QueueBytes (whatever the reason: the
// bound on its memory), when they pass QueueLen while its writer has been
// blocked in one socket write for SlowWrite or longer (the peer is not
// reading), or when a write hits WriteTimeout. A queue longer than QueueLen
// behind a socket that takes what is written is the server being busy: it
// is written as one larger batch when the connection's writer runs.
type Config struct {
	QueueBytes       int           // pending bytes per connection before 4009; 1 MiB
	QueueLen         int           // pending frames per connection before 4009 once a write blocks; 1024
	SlowWrite        time.Duration // a socket write blocked this long makes a connection over QueueLen slow; 1s
	WriteTimeout     time.Duration // deadline of one socket write; 10s
	PingInterval     time.Duration // server ping period; 25s
	PingTimeout      time.Duration // a ping unanswered this long reaps the connection; 10s
	MaxSubscriptions int           // channels per connection; 128

	// OnClose, if set, is called once per connection the hub closes, with
	// the close code (CloseAbnormal for a dead peer or a failed write), for
	// metrics. It must not block.
	OnClose func(code int)

	// OnWrite, if set, is called by a connection's writer after each batch
	// of frames it took from the queue went out to the socket, for
	// metrics. It must not block: the connection's next frames wait.
	OnWrite func(Write)

	// OnEvict, if set, is called when Broadcast removed c from channel
	// because the channel's event belongs to another user; the caller tells
	// the client (c.Send). It must not block.
	OnEvict func(c *Conn, channel string)
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.QueueBytes, defaultQueueBytes)
	def(&c.QueueLen, defaultQueueLen)
	def(&c.MaxSubscriptions, defaultMaxSubs)
	defDur(&c.SlowWrite, defaultSlowWrite)
	defDur(&c.WriteTimeout, defaultWriteTimout)
	defDur(&c.PingInterval, defaultPing)
	defDur(&c.PingTimeout, defaultPingTimeout)
	if c.OnClose == nil {
		c.OnClose = func(int) {}
	}
	if c.OnWrite == nil {
		c.OnWrite = func(Write) {}
	}
	if c.OnEvict == nil {
		c.OnEvict = func(*Conn, string) {}
	}
}

// Hub holds the connections of one replica. Its methods are safe for
// concurrent use. Every goroutine it starts ends before Close returns.
type Hub struct {
	cfg  Config
	src  Source
	log  *slog.Logger
	seed maphash.Seed

	ctx    context.Context // cancelled by Close: aborts pings
	cancel context.CancelFunc
	wg     sync.WaitGroup // writers and closers

	draining atomic.Bool
	conns    atomic.Int64
	subs     atomic.Int64

	channels [numShards]channelShard
	users    [numShards]userShard
}

type channelShard struct {
	mu   sync.RWMutex
	subs map[string]*connSet // channel → subscribers; guarded by mu
}

type userShard struct {
	mu    sync.RWMutex
	conns map[string]*connSet // user → connections; guarded by mu
}

// New returns a Hub that subscribes through src. Call Run to start its
// heartbeat and Close to stop it.
func New(cfg Config, src Source, log *slog.Logger) *Hub {
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hub{cfg: cfg, src: src, log: log, seed: maphash.MakeSeed(), ctx: ctx, cancel: cancel}
	for i := range h.channels {
		h.channels[i].subs = make(map[string]*connSet)
		h.users[i].conns = make(map[string]*connSet)
	}
	return h
}

func (h *Hub) shard(key string) int { return int(maphash.String(h.seed, key) % numShards) }

// Add registers a new connection of user. tag is an opaque label the caller
// may match on later (the gateway keeps a session hash there). It fails with
// ErrDraining once Drain or Close began: the check and the registration
// happen under the user shard's lock, which Drain's snapshot takes too, so
// a connection is either refused or closed by the drain.
func (h *Hub) Add(id, user, tag string, t Transport) (*Conn, error) {
	c := &Conn{ID: id, User: user, Tag: tag, t: t, hub: h}
	s := &h.users[h.shard(user)]
	s.mu.Lock()
	if h.draining.Load() {
		s.mu.Unlock()
		return nil, ErrDraining
	}
	m := s.conns[user]
	if m == nil {
		m = &connSet{}
		s.conns[user] = m
	}
	m.add(c)
	s.mu.Unlock()
	h.conns.Add(1)
	return c, nil
}

// Remove unregisters c, ends all its subscriptions (giving their
// references back to the source) and drops whatever it had queued. It is
// called once, by the connection's owner, when its socket is done; later
// calls do nothing.
func (h *Hub) Remove(c *Conn) {
	c.mu.Lock()
	if c.removed {
		c.mu.Unlock()
		return
	}
	c.removed = true
	c.closed = true // nothing more is queued or written
	c.dropQueueLocked()
	chans := make([]string, len(c.subs))
	for i, s := range c.subs {
		chans[i] = s.channel
	}
	c.subs = nil
	c.mu.Unlock()

	for _, ch := range chans {
		h.dropSub(c, ch)
	}
	if len(chans) > 0 {
		h.src.Unsubscribe(chans...)
	}
	s := &h.users[h.shard(c.User)]
	s.mu.Lock()
	if m := s.conns[c.User]; m != nil {
		m.remove(c)
		if m.len() == 0 {
			delete(s.conns, c.User)
		}
	}
	s.mu.Unlock()
	h.conns.Add(-1)
}

// Joined is what Join learned, for the reply that announces the
// subscription.
type Joined struct {
	Already   bool   // c had the channel: nothing changed, nothing replayed
	Resumed   bool   // since was given: Recovered tells whether the gap was covered
	Recovered bool   // no event after since is lost (also true when Already)
	Last      string // a fresh join's starting point: every event after it follows the reply; "" otherwise
}

// Join subscribes c to channel as one operation: it registers c (holding
// the channel's live frames back), takes a source reference and waits for
// the subscription, then either learns the channel's last id (since "") or
// reads the events after since, and queues reply(Joined), the missed
// events and the held frames, each event exactly once, in order. Events
// after the Last (or since) it answered all reach c until it leaves.
//
// With since, a replay begins after since or after the newest event of
// the channel still queued for c from an earlier subscription, whichever
// is newer, so a quick unsubscribe and resubscribe sends nothing twice.
//
// When c already has channel it only queues reply(Joined{Already: true,
// Recovered: true}), without a Last: the channel's newest id may be ahead
// of events still queued for c, and a client resuming from it would skip
// them. Errors: ErrClosed, ErrTooManyChannels, the
// source's Subscribe error, or ErrForbidden when the history belongs to
// another user; then c is not subscribed and nothing was queued.
func (h *Hub) Join(ctx context.Context, c *Conn, channel, since string, reply func(Joined) []byte) error {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return ErrClosed
	case c.subLocked(channel) != nil:
		c.mu.Unlock()
		c.Send(reply(Joined{Already: true, Recovered: true}))
		return nil
	case len(c.subs) >= h.cfg.MaxSubscriptions:
		c.mu.Unlock()
		return ErrTooManyChannels
	}
	c.subs = append(c.subs, sub{channel: channel, holding: true})
	if since != "" {
		since = c.queuedNewestLocked(channel, since)
	}
	c.mu.Unlock()
	h.addSub(c, channel)

	subscribed := false
	defer func() {
		// Subscribe failed, or panicked (a caller may recover): c holds no
		// reference in the source, so a later Remove must not give one back
		// on behalf of another connection to the channel.
		if !subscribed {
			h.unjoin(c, channel)
		}
	}()
	if err := h.src.Subscribe(ctx, channel); err != nil {
		return err
	}
	subscribed = true
	if since == "" {
		last := h.src.Last(channel)
		c.release(channel, reply(Joined{Last: last}), nil, last)
		return nil
	}
	r, err := h.src.History(ctx, channel, since)
	if err != nil {
		h.log.Warn("history read failed; resuming without it", "kind", events.Prefix(channel), "err", err)
	}
	if r.Owner != "" && r.Owner != c.User {
		h.Leave(c, channel)
		return ErrForbidden
	}
	last := since
	if n := len(r.Events); n > 0 {
		last = r.Events[n-1].ID
	}
	c.release(channel, reply(Joined{Resumed: true, Recovered: err == nil && r.Complete}), r.Events, last)
	return nil
}

// unjoin undoes a Join whose source subscription failed (no reference
// was taken).
func (h *Hub) unjoin(c *Conn, channel string) {
	if c.forget(channel) {
		h.dropSub(c, channel)
	}
}

// Leave ends c's subscription to channel, drops what was held for it and
// reports whether c was subscribed.
func (h *Hub) Leave(c *Conn, channel string) bool {
	if !c.forget(channel) {
		return false
	}
	h.dropSub(c, channel)
	h.src.Unsubscribe(channel)
	return true
}

func (h *Hub) addSub(c *Conn, channel string) {
	s := &h.channels[h.shard(channel)]
	s.mu.Lock()
	m := s.subs[channel]
	if m == nil {
		m = &connSet{}
		s.subs[channel] = m
	}
	m.add(c)
	s.mu.Unlock()
	h.subs.Add(1)
}

func (h *Hub) dropSub(c *Conn, channel string) {
	s := &h.channels[h.shard(channel)]
	s.mu.Lock()
	if m := s.subs[channel]; m != nil {
		if m.remove(c) {
			h.subs.Add(-1)
		}
		if m.len() == 0 {
			delete(s.subs, channel)
		}
	}
	s.mu.Unlock()
}

// Broadcast queues frame, of event id, for every local subscriber of
// channel and returns how many took it (or held it for a join). It never
// blocks on a socket; the same frame slice is shared by all recipients and
// must not be modified afterwards. When owner is not empty only the
// owner's connections get it: the others leave the channel and are
// reported to OnEvict.
func (h *Hub) Broadcast(channel, id, owner string, frame []byte) int {
	s := &h.channels[h.shard(channel)]
	n := 0
	ms := publishedMS(id) // once per event, not per recipient
	var evict []*Conn
	s.mu.RLock()
	for c := range s.subs[channel].all() {
		if owner != "" && c.User != owner {
			evict = append(evict, c)
			continue
		}
		if c.deliver(channel, id, ms, frame) {
			n++
		}
	}
	s.mu.RUnlock()
	for _, c := range evict {
		if h.Leave(c, channel) {
			h.cfg.OnEvict(c, channel)
		}
	}
	return n
}

// Notify queues frame for every local subscriber of channel, also those
// still joining it: a notice about the channel, not one of its events.
func (h *Hub) Notify(channel string, frame []byte) int {
	s := &h.channels[h.shard(channel)]
	n := 0
	s.mu.RLock()
	for c := range s.subs[channel].all() {
		if c.Send(frame) {
			n++
		}
	}
	s.mu.RUnlock()
	return n
}

// CloseUser closes, with code, every connection of user for which match
// returns true (all of them when match is nil) and returns how many.
func (h *Hub) CloseUser(user string, match func(*Conn) bool, code int, reason string) int {
	var victims []*Conn
	s := &h.users[h.shard(user)]
	s.mu.RLock()
	for c := range s.conns[user].all() {
		if match == nil || match(c) {
			victims = append(victims, c)
		}
	}
	s.mu.RUnlock()
	for _, c := range victims {
		c.Close(code, reason)
	}
	return len(victims)
}

// CloseWhere closes, with code, every connection for which match returns
// true and returns how many. It visits every connection: prefer CloseUser.
func (h *Hub) CloseWhere(match func(*Conn) bool, code int, reason string) int {
	var victims []*Conn
	h.Each(func(c *Conn) {
		if match(c) {
			victims = append(victims, c)
		}
	})
	for _, c := range victims {
		c.Close(code, reason)
	}
	return len(victims)
}

// Each calls fn for every connection; fn must not call back into the hub.
func (h *Hub) Each(fn func(*Conn)) {
	for i := range h.users {
		s := &h.users[i]
		s.mu.RLock()
		for _, m := range s.conns {
			for c := range m.all() {
				fn(c)
			}
		}
		s.mu.RUnlock()
	}
}

func (h *Hub) snapshot() []*Conn {
	all := make([]*Conn, 0, h.conns.Load())
	h.Each(func(c *Conn) { all = append(all, c) })
	return all
}

// Conns returns the number of registered connections.
func (h *Hub) Conns() int { return int(h.conns.Load()) }

// Subscriptions returns the number of (connection, channel) pairs.
func (h *Hub) Subscriptions() int { return int(h.subs.Load()) }

// Channels returns the number of channels with at least one local subscriber.
func (h *Hub) Channels() int {
	n := 0
	for i := range h.channels {
		s := &h.channels[i]
		s.mu.RLock()
		n += len(s.subs)
		s.mu.RUnlock()
	}
	return n
}

// Run pings every connection each PingInterval and reaps the ones that do
// not answer within PingTimeout, until ctx is done or the hub is closed. It
// waits for its pings before it returns.
func (h *Hub) Run(ctx context.Context) {
	t := time.NewTicker(h.cfg.PingInterval)
	defer t.Stop()
	var pings sync.WaitGroup
	defer pings.Wait()
	sem := make(chan struct{}, maxParallelPings)
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.ctx.Done():
			return
		case <-t.C:
		}
		for _, c := range h.snapshot() {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			pings.Go(func() {
				defer func() { <-sem }()
				c.ping()
			})
		}
	}
}

// Drain refuses new connections and closes every open one with code,
// spread evenly over spread so that clients do not all reconnect at once.
// It returns when all connections are gone or ctx is done; then it drops
// the rest at once.
func (h *Hub) Drain(ctx context.Context, code int, reason string, spread time.Duration) {
	h.draining.Store(true)
	all := h.snapshot() // Add registers under the shard locks this takes: none is missed
	start := time.Now()
	for i, c := range all {
		at := start.Add(spread * time.Duration(i) / time.Duration(len(all)))
		if d := time.Until(at); d > time.Millisecond && ctx.Err() == nil {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		c.Close(code, reason)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for h.Conns() > 0 && ctx.Err() == nil {
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	if h.Conns() > 0 {
		for _, c := range h.snapshot() {
			c.shut(false, 0, "")
		}
	}
}

// WriteTimeout returns how long one socket write may take.
func (h *Hub) WriteTimeout() time.Duration { return h.cfg.WriteTimeout }

// PingInterval returns the heartbeat period.
func (h *Hub) PingInterval() time.Duration { return h.cfg.PingInterval }

// Draining reports whether Drain or Close began.
func (h *Hub) Draining() bool { return h.draining.Load() }

// Close refuses new connections, aborts pending pings, drops the
// connections still registered (which aborts their writes) and waits for
// the hub's goroutines.
func (h *Hub) Close() {
	h.draining.Store(true)
	h.cancel()
	for _, c := range h.snapshot() {
		c.shut(false, 0, "")
	}
	h.wg.Wait()
}
