// Package hub keeps this replica's client connections and fans events out to
// them. It knows channels, connections and bytes, nothing of Redis, HTTP or
// sessions.
//
// Fan-out encodes nothing: Broadcast hands the same frame bytes to every
// subscriber's bounded send queue under a shard read lock and returns. A
// connection's writer goroutine exists only while its queue has work, so an
// idle connection costs no goroutine here. A queue that overflows closes
// its connection with CloseSlowConsumer, asynchronously, without slowing any
// other connection.
//
// Lock order: shard.mu before Conn.mu; never the reverse.
package hub

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Close codes the hub itself uses (PROTOCOL §4).
const (
	CloseNormal        = 1000
	CloseGoingAway     = 1001
	ClosePolicy        = 1008
	CloseRestart       = 1012
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
	maxParallelPings   = 256
)

// Errors returned by the hub.
var (
	ErrDraining        = errors.New("hub: draining")
	ErrClosed          = errors.New("hub: connection closed")
	ErrTooManyChannels = errors.New("hub: too many subscriptions")
)

// Transport is the socket under a connection. Write sends one text message;
// the hub gives every call a deadline. Close performs a closing handshake
// and may block for a few seconds; CloseNow drops the socket at once.
type Transport interface {
	Write(ctx context.Context, frame []byte) error
	Ping(ctx context.Context) error
	Close(code int, reason string) error
	CloseNow() error
}

// Config tunes a Hub. Zero fields take the defaults in their comments.
type Config struct {
	QueueBytes       int           // pending bytes per connection before 4009; 1 MiB
	QueueLen         int           // pending frames per connection before 4009; 1024
	WriteTimeout     time.Duration // deadline of one socket write; 10s
	PingInterval     time.Duration // server ping period; 25s
	PingTimeout      time.Duration // a ping unanswered this long reaps the connection; 10s
	MaxSubscriptions int           // channels per connection; 128

	// OnClose, if set, is called once per connection the hub closes, with
	// the close code (for metrics). It must not block.
	OnClose func(code int)
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
	defDur(&c.WriteTimeout, defaultWriteTimout)
	defDur(&c.PingInterval, defaultPing)
	defDur(&c.PingTimeout, defaultPingTimeout)
	if c.OnClose == nil {
		c.OnClose = func(int) {}
	}
}

// Hub holds the connections of one replica. Its methods are safe for
// concurrent use. Every goroutine it starts ends before Close returns.
type Hub struct {
	cfg  Config
	log  *slog.Logger
	seed maphash.Seed

	ctx    context.Context // cancelled by Close: aborts writes and pings
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
	subs map[string]map[*Conn]struct{} // guarded by mu
}

type userShard struct {
	mu    sync.RWMutex
	conns map[string]map[*Conn]struct{} // user → connections; guarded by mu
}

// New returns a Hub. Call Run to start its heartbeat and Close to stop it.
func New(cfg Config, log *slog.Logger) *Hub {
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hub{cfg: cfg, log: log, seed: maphash.MakeSeed(), ctx: ctx, cancel: cancel}
	for i := range h.channels {
		h.channels[i].subs = make(map[string]map[*Conn]struct{})
		h.users[i].conns = make(map[string]map[*Conn]struct{})
	}
	return h
}

func (h *Hub) shard(key string) int { return int(maphash.String(h.seed, key) % numShards) }

// Add registers a new connection of user. tag is an opaque label the caller
// may match on later (the gateway keeps a session hash there). It fails with
// ErrDraining once Drain or Close began.
func (h *Hub) Add(id, user, tag string, t Transport) (*Conn, error) {
	if h.draining.Load() {
		return nil, ErrDraining
	}
	c := &Conn{ID: id, User: user, Tag: tag, t: t, hub: h, done: make(chan struct{})}
	s := &h.users[h.shard(user)]
	s.mu.Lock()
	m := s.conns[user]
	if m == nil {
		m = make(map[*Conn]struct{})
		s.conns[user] = m
	}
	m[c] = struct{}{}
	s.mu.Unlock()
	h.conns.Add(1)
	return c, nil
}

// Remove unregisters c and all its subscriptions and returns the channels it
// was subscribed to, so the caller can release them upstream. It is called
// once, by the connection's owner, when its socket is done; later calls
// return nil.
func (h *Hub) Remove(c *Conn) []string {
	c.mu.Lock()
	if c.removed {
		c.mu.Unlock()
		return nil
	}
	c.removed = true
	c.closed = true // nothing more is queued or written
	c.queue, c.backlog, c.pending, c.backlogBytes = nil, nil, 0, 0
	chans := c.channels
	c.channels = nil
	c.mu.Unlock()

	for _, ch := range chans {
		h.dropSub(c, ch)
	}
	s := &h.users[h.shard(c.User)]
	s.mu.Lock()
	if m := s.conns[c.User]; m != nil {
		delete(m, c)
		if len(m) == 0 {
			delete(s.conns, c.User)
		}
	}
	s.mu.Unlock()
	h.conns.Add(-1)
	return chans
}

// Subscribe adds c to channel. added is false when c already had it.
func (h *Hub) Subscribe(c *Conn, channel string) (added bool, err error) {
	return h.subscribe(c, channel, false)
}

// SubscribeResume adds c to channel like Subscribe, but holds the
// channel's live frames back until c.Resume, so that the caller can read
// what c missed and have it sent first. When c already had the channel
// (added is false) nothing is held back and Resume must not be called.
func (h *Hub) SubscribeResume(c *Conn, channel string) (added bool, err error) {
	return h.subscribe(c, channel, true)
}

func (h *Hub) subscribe(c *Conn, channel string, hold bool) (added bool, err error) {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return false, ErrClosed
	case c.has(channel):
		c.mu.Unlock()
		return false, nil
	case len(c.channels) >= h.cfg.MaxSubscriptions:
		c.mu.Unlock()
		return false, ErrTooManyChannels
	}
	c.channels = append(c.channels, channel)
	if hold {
		if c.buffering == nil {
			c.buffering = make(map[string][]Frame)
		}
		c.buffering[channel] = nil
	}
	c.mu.Unlock()

	s := &h.channels[h.shard(channel)]
	s.mu.Lock()
	m := s.subs[channel]
	if m == nil {
		m = make(map[*Conn]struct{})
		s.subs[channel] = m
	}
	m[c] = struct{}{}
	s.mu.Unlock()
	h.subs.Add(1)
	return true, nil
}

// Unsubscribe removes c from channel and reports whether it was subscribed.
func (h *Hub) Unsubscribe(c *Conn, channel string) bool {
	c.mu.Lock()
	i := c.index(channel)
	if i < 0 {
		c.mu.Unlock()
		return false
	}
	c.channels = append(c.channels[:i], c.channels[i+1:]...)
	delete(c.buffering, channel)
	delete(c.skip, channel)
	c.mu.Unlock()
	h.dropSub(c, channel)
	return true
}

func (h *Hub) dropSub(c *Conn, channel string) {
	s := &h.channels[h.shard(channel)]
	s.mu.Lock()
	if m := s.subs[channel]; m != nil {
		if _, ok := m[c]; ok {
			delete(m, c)
			h.subs.Add(-1)
		}
		if len(m) == 0 {
			delete(s.subs, channel)
		}
	}
	s.mu.Unlock()
}

// Broadcast queues frame, of event id, for every local subscriber of
// channel and returns how many took it (or held it for a resume). It never blocks on a socket; the same frame slice is
// shared by all recipients and must not be modified afterwards.
func (h *Hub) Broadcast(channel, id string, frame []byte) int {
	s := &h.channels[h.shard(channel)]
	n := 0
	s.mu.RLock()
	for c := range s.subs[channel] {
		if c.deliver(channel, id, frame) {
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
	for c := range s.conns[user] {
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
			for c := range m {
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
	all := h.snapshot()
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

// PingInterval returns the heartbeat period.
func (h *Hub) PingInterval() time.Duration { return h.cfg.PingInterval }

// Draining reports whether Drain or Close began.
func (h *Hub) Draining() bool { return h.draining.Load() }

// Close refuses new connections, aborts pending writes and pings and waits
// for the hub's goroutines. Connections still registered are dropped.
func (h *Hub) Close() {
	h.draining.Store(true)
	h.cancel()
	for _, c := range h.snapshot() {
		c.shut(false, 0, "")
	}
	h.wg.Wait()
}
