package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
)

var _ Broker = (*Redis)(nil)

// RedisOptions tunes a Redis broker. The zero value is ready to use.
type RedisOptions struct {
	// Classic also subscribes, for the broker's whole life, to the classic
	// events.ClassicChannel and turns each message there into events
	// (PROTOCOL §1–2). Every replica may do so: the conversion uses an
	// idempotency key derived from the payload, so one event per channel is
	// created however many replicas hear the message. Classic messages
	// published before this subscription is confirmed are missed; it is
	// confirmed by the time any Subscribe call returns.
	Classic bool

	// ClassicQueue is how many classic messages may wait for conversion;
	// beyond that they are dropped and counted (other replicas convert them
	// too). Default 1024.
	ClassicQueue int

	// OnResubscribe, when set, is called after go-redis reconnected and
	// resubscribed, with the subscribed Herald channels, before any frame
	// received on the new connection is delivered. Frames published while
	// disconnected are lost to pub/sub: this is where to refill them from
	// history. It may be called more than once per reconnect, each time
	// with some of the channels. It is called from the delivery loop, so,
	// like the Handler, it must neither block nor call back into the broker.
	OnResubscribe func(channels []string)

	// ReceiveBuffer is the size of the delivery loop's queue, which the
	// connections' readers fill. Default 2048. (A full queue holds the
	// readers back; Redis then buffers for the connection.)
	ReceiveBuffer int

	// ResyncInterval is how long the broker waits for Redis to confirm a
	// subscription before it asks again; a confirmation is lost when the
	// connection drops, and on a cluster when the node answered MOVED
	// (after two resyncs without one the connection is rebuilt on the
	// slot's current owner). Default 1s.
	ResyncInterval time.Duration

	// OnGap, when set, is told about each channel whose refill after a
	// reconnect found events already gone from history, or gave up after
	// failing repeatedly: its local subscribers missed events. It is
	// called from the delivery loop and must not block.
	OnGap GapHandler

	// ProbeInterval is how often the broker publishes a probe on a channel
	// of each pub/sub connection, to find out whether it still receives;
	// ProbeTimeout is how long it waits to see the probe before it
	// replaces the connection (and refills its channels from history).
	// That catches what go-redis cannot: a connection that stopped
	// receiving without breaking, one left on an old primary after a
	// Sentinel failover, or a shard connection on a node that no longer
	// owns its slot. Defaults 5s and 3s.
	ProbeInterval, ProbeTimeout time.Duration

	// WatchPrimary, for a primary failed over by Sentinel, makes every
	// probe tick also ask which server the client's commands reach (its
	// run_id, INFO server): go-redis moves its command connections on
	// +switch-master but leaves pub/sub connections on the old primary,
	// which, once it resynced as a replica, relays the new primary's
	// frames to them, and a probe could pass there. When the run_id
	// changes, every connection drops the frames of its old PubSub at once
	// and is rebuilt, and its channels refill from history after the last
	// event delivered. Off by default (single server, cluster).
	WatchPrimary bool

	// OnPrimaryChange, when set, is called (from the probe goroutine) each
	// time WatchPrimary saw the primary change, after the rebuilds began:
	// where other pub/sub connections (the session revocation watch) are
	// told to move too. It must not block.
	OnPrimaryChange func()
}

// RedisStats are the broker's counters since it started.
type RedisStats struct {
	Channels         int    // Herald channels with at least one local reference
	Connections      int    // pub/sub connections (one, or on a cluster up to one per partition and one for the classic ingress)
	Received         uint64 // pub/sub messages read, classic ones included
	Delivered        uint64 // frames handed to the Handler
	Ignored          uint64 // messages of channels without local references, or of a replaced connection
	Resubscribes     uint64 // resubscriptions seen after pub/sub reconnects
	Duplicates       uint64 // frames dropped because their id was already delivered
	Refilled         uint64 // frames delivered from history after a reconnect
	RefillGaps       uint64 // refills that found events already gone from history, or gave up
	RefillFailures   uint64 // history or baseline reads that failed (and were retried)
	PendingDropped   uint64 // live frames dropped while a refill held too many (read again from history)
	ClassicConverted uint64 // classic messages published as events (or found already published)
	ClassicDropped   uint64 // classic messages dropped because the queue was full
	ClassicInvalid   uint64 // classic messages that were not valid effect:complete JSON
	ClassicFailed    uint64 // classic messages whose publish failed
	Replacements     uint64 // pub/sub connections replaced: a missed probe, a slot that moved, a node that stopped answering
	Moves            uint64 // of those, the ones a cluster asked for: its server unsubscribed a slot that moved
	Probes           uint64 // probes published (one per connection every ProbeInterval)
	ProbesLate       uint64 // probes not seen in time on a connection that was still delivering (a busy delivery loop): not replaced
	PrimaryChanges   uint64 // primary changes seen by WatchPrimary (each rebuilt every connection)
	OutboxFlushed    uint64 // outbox entries published by the periodic flush (left behind by a failed flush or a stopped publisher)
}

// Redis is the shared Broker. Publish runs events.RedisLog's atomic script;
// delivery uses go-redis PubSubs (one connection each), channels being
// subscribed while they have local references.
//
// On a single Redis (or under Sentinel) one PubSub carries every channel,
// with plain SUBSCRIBE. On a Redis Cluster (the RedisLog is Sharded) each
// partition (events.Partition) with local channels gets its own PubSub,
// subscribed with SSUBSCRIBE: every channel of a partition hashes to one
// slot, so the PubSub sits on the node that owns the slot, and go-redis's
// one-command resubscription after a reconnect stays valid. The classic
// ingress keeps one plain PubSub (a cluster broadcasts plain PUBLISH to
// every node). See redis_conn.go for what happens when a slot moves.
//
// A channel's first Subscribe holds its frames back until Redis confirmed
// the subscription and the channel's baseline (events.RedisLog.Baselines)
// was read after that: every event after the baseline then reaches the
// Handler, and Last answers it. The same hold-and-read closes the gap of a
// reconnect or a move (a refill, see redis_refill.go).
//
// Subscriptions are reconciled in rounds, per connection, by one goroutine
// each, which sends a round's changes as one SUBSCRIBE and one UNSUBSCRIBE
// (or their sharded forms). The UNSUBSCRIBE ends with a barrier, a
// never-subscribed channel whose name carries the round number (and, on a
// cluster, the partition's hash tag, so that it goes to the same node).
// Redis answers the commands of a connection in order, so the barrier's
// confirmation proves every channel of that round and the earlier ones is
// subscribed; Subscribe waits for it. go-redis resubscribes its channels
// before anything else on a new connection, so the proof holds across
// reconnects too; a barrier lost with its connection is sent again after
// ResyncInterval.
type Redis struct {
	rdb     redis.UniversalClient
	log     *events.RedisLog
	names   events.Names
	h       Handler
	logger  *slog.Logger
	opts    RedisOptions
	sharded bool          // SSUBSCRIBE per partition (the log publishes with SPUBLISH)
	in      chan connMsg  // every connection's messages, to the delivery loop
	probed  chan struct{} // capacity 1: a probe arrived

	ctx     context.Context // cancelled by Close; stops the goroutines
	cancel  context.CancelFunc
	wg      sync.WaitGroup // reconcilers, forwarders, the delivery loop, the refiller, the probe, the classic worker
	refill  chan struct{}  // capacity 1: wakes the refiller
	filled  chan refillResult
	classic chan []byte   // nil unless opts.Classic
	done    chan struct{} // closed by Close: wakes waiting Subscribe calls

	// mu guards the fields below and the psConn fields it names. It is
	// never held across network I/O or Handler calls.
	mu       sync.Mutex
	closed   bool
	plain    *psConn              // the unsharded connection; nil on a cluster without classic ingress
	parts    map[int]*psConn      // on a cluster: the connection of each partition with local channels
	subs     map[string]*redisSub // by pub/sub channel name
	live     int                  // Herald channels with refs > 0
	toRefill map[string]struct{}  // pub/sub names whose baseline or refill read is due

	stats redisCounters
}

// redisSub is the state of one pub/sub channel.
type redisSub struct {
	channel string  // Herald channel; "" for the classic ingress and probes
	conn    *psConn // the connection that carries it
	refs    int
	round   uint64 // conn's round whose SUBSCRIBE carried it; 0 while not sent

	// Delivery sequencing. lastID is the newest event id handed to the
	// Handler, or the channel's baseline read once its SUBSCRIBE was
	// confirmed; "" until then. Frames at or below it are duplicates.
	// While refilling (also while the baseline is read), frames received
	// live wait in pending until the read has been applied.
	lastID    string
	refilling bool
	waitSub   bool   // read the baseline or refill once this sub's (re)subscription is confirmed
	gen       uint64 // read generation: bumped by each reconnect, discards reads in flight
	failures  int    // consecutive failed refill reads
	pending   []pendingFrame
	ready     chan struct{} // closed once lastID is first set; nil for the classic and probe subs
}

// pendingFrame is a live frame held back during a refill.
type pendingFrame struct {
	id, owner string
	frame     []byte
}

// maxPending bounds the frames one channel buffers during a refill; past
// it they are dropped and the history is read again from the last
// delivered id, which covers them.
const maxPending = 10000

type redisCounters struct {
	received, delivered, ignored, resubscribes atomic.Uint64
	duplicates, refilled, refillGaps           atomic.Uint64
	refillFailures, pendingDropped             atomic.Uint64
	replacements, moves, probes, probesLate    atomic.Uint64
	primaryChanges, outboxFlushed              atomic.Uint64
	converted, dropped, invalid, publishFailed atomic.Uint64
}

// NewRedis returns a running Redis broker. rdb carries pub/sub and Ping;
// log is the publish path (also for classic ingress), and says whether
// Redis is a cluster (events.LogConfig.Sharded); names maps Herald channels
// to pub/sub channels; h receives the frames. A nil logger discards. Close
// stops it; rdb stays open, it belongs to the caller.
func NewRedis(rdb redis.UniversalClient, log *events.RedisLog, names events.Names, h Handler, logger *slog.Logger, opts RedisOptions) *Redis {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.ClassicQueue <= 0 {
		opts.ClassicQueue = 1024
	}
	if opts.ReceiveBuffer <= 0 {
		opts.ReceiveBuffer = 2048
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = time.Second
	}
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = 5 * time.Second
	}
	if opts.ProbeTimeout <= 0 {
		opts.ProbeTimeout = 3 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Redis{
		rdb: rdb, log: log, names: names, h: h, logger: logger, opts: opts,
		sharded:  log.Sharded(),
		in:       make(chan connMsg, opts.ReceiveBuffer),
		probed:   make(chan struct{}, 1),
		ctx:      ctx,
		cancel:   cancel,
		refill:   make(chan struct{}, 1),
		filled:   make(chan refillResult),
		done:     make(chan struct{}),
		parts:    make(map[int]*psConn),
		subs:     make(map[string]*redisSub),
		toRefill: make(map[string]struct{}),
	}
	b.mu.Lock()
	if !b.sharded || opts.Classic {
		b.plain = b.newConnLocked(-1)
	}
	if opts.Classic {
		b.classic = make(chan []byte, opts.ClassicQueue)
		b.addSubLocked(events.ClassicChannel, &redisSub{conn: b.plain, refs: 1})
		b.wg.Go(b.convertClassic)
	}
	b.mu.Unlock()
	b.wg.Go(b.probe)
	b.wg.Go(b.refiller)
	b.wg.Go(b.receive)
	return b
}

// Publish appends pubs to their channels' histories and publishes them in
// one atomic script run (events.RedisLog.Append), returning their ids.
func (b *Redis) Publish(ctx context.Context, idemKey string, pubs ...events.Publication) ([]string, error) {
	if b.isClosed() {
		return nil, ErrClosed
	}
	return b.log.Append(ctx, idemKey, pubs...)
}

// History reads channel's history after since through the history script
// (events.RedisLog.Range).
func (b *Redis) History(ctx context.Context, channel, since string) (events.Replay, error) {
	if b.isClosed() {
		return events.Replay{}, ErrClosed
	}
	return b.log.Range(ctx, channel, since)
}

// Owner reads an effect's owner (events.RedisLog.Owner).
func (b *Redis) Owner(ctx context.Context, effectID string) (string, error) {
	if b.isClosed() {
		return "", ErrClosed
	}
	return b.log.Owner(ctx, effectID)
}

// SetOwner writes the app's effect:{id}:owner key.
func (b *Redis) SetOwner(ctx context.Context, effectID, userID string, ttl time.Duration) error {
	if b.isClosed() {
		return ErrClosed
	}
	return b.log.SetOwner(ctx, effectID, userID, ttl)
}

// Last returns the newest id delivered on channel, or its baseline when the
// subscription began; "" when channel has no local reference.
func (b *Redis) Last(channel string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.subs[b.names.PubSub(channel)]
	if s == nil || s.refs == 0 {
		return ""
	}
	return s.lastID
}

// Ping sends PING to Redis.
func (b *Redis) Ping(ctx context.Context) error {
	if b.isClosed() {
		return ErrClosed
	}
	if err := b.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis ping: %w", err)
	}
	return nil
}

// Close stops delivery, fails waiting Subscribe calls with ErrClosed, closes
// the pub/sub connections and waits for the broker's goroutines. Calling it
// again returns nil.
func (b *Redis) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	b.mu.Unlock()

	b.cancel()
	b.mu.Lock()
	var open []*redis.PubSub
	for _, c := range b.connsLocked() {
		if c.ps != nil {
			open = append(open, c.ps)
		}
	}
	b.mu.Unlock()
	var errs []error
	for _, ps := range open {
		// Ends its forwarder: its next read finds ps closed.
		if err := ps.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	b.wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close redis pub/sub: %w", err)
	}
	return nil
}

// Stats returns the broker's counters.
func (b *Redis) Stats() RedisStats {
	b.mu.Lock()
	live, conns := b.live, len(b.connsLocked())
	b.mu.Unlock()
	c := &b.stats
	return RedisStats{
		Channels:         live,
		Connections:      conns,
		Received:         c.received.Load(),
		Delivered:        c.delivered.Load(),
		Ignored:          c.ignored.Load(),
		Resubscribes:     c.resubscribes.Load(),
		Duplicates:       c.duplicates.Load(),
		Refilled:         c.refilled.Load(),
		RefillGaps:       c.refillGaps.Load(),
		RefillFailures:   c.refillFailures.Load(),
		PendingDropped:   c.pendingDropped.Load(),
		ClassicConverted: c.converted.Load(),
		ClassicDropped:   c.dropped.Load(),
		ClassicInvalid:   c.invalid.Load(),
		ClassicFailed:    c.publishFailed.Load(),
		Replacements:     c.replacements.Load(),
		Moves:            c.moves.Load(),
		Probes:           c.probes.Load(),
		ProbesLate:       c.probesLate.Load(),
		PrimaryChanges:   c.primaryChanges.Load(),
		OutboxFlushed:    c.outboxFlushed.Load(),
	}
}

func (b *Redis) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}
