package broker

import (
	"context"
	"crypto/rand"
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

	// ReceiveBuffer is the size of the go-redis message channel between its
	// socket reader and the delivery loop. Default 1024.
	ReceiveBuffer int

	// ResyncInterval is how long the broker waits for Redis to confirm a
	// subscription before it asks again; a confirmation is lost when the
	// connection drops. Default 1s.
	ResyncInterval time.Duration

	// OnGap, when set, is told about each channel whose refill after a
	// reconnect found events already gone from history, or gave up after
	// failing repeatedly: its local subscribers missed events. It is
	// called from the delivery loop and must not block.
	OnGap GapHandler

	// ProbeInterval is how often the broker publishes a probe on a channel
	// of its own, to find out whether its pub/sub connection still
	// receives; ProbeTimeout is how long it waits to see the probe before
	// it replaces the connection (and refills every channel from history).
	// That catches what go-redis cannot: a connection that stopped
	// receiving without breaking, or one left on an old master after a
	// failover. Defaults 5s and 3s.
	ProbeInterval, ProbeTimeout time.Duration
}

// RedisStats are the broker's counters since it started.
type RedisStats struct {
	Channels         int    // Herald channels with at least one local reference
	Received         uint64 // pub/sub messages read, classic ones included
	Delivered        uint64 // frames handed to the Handler
	Ignored          uint64 // messages of channels without local references
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
	Replacements     uint64 // pub/sub connections replaced after a missed probe
}

// Redis is the shared Broker. Publish runs events.RedisLog's atomic script;
// delivery uses one go-redis PubSub (one connection) for all channels,
// subscribed while they have local references.
//
// A channel's first Subscribe holds its frames back until Redis confirmed
// the SUBSCRIBE and the channel's baseline (events.RedisLog.Baselines) was
// read after that: every event after the baseline then reaches the
// Handler, and Last answers it. The same hold-and-read closes the gap of a
// reconnect (a refill, see redis_refill.go).
//
// Subscriptions are reconciled in rounds by one goroutine, which sends each
// round's changes as one SUBSCRIBE and one UNSUBSCRIBE. The UNSUBSCRIBE
// ends with a barrier, a never-subscribed channel whose name carries the
// round number. Redis answers the commands of a connection in order, so
// the barrier's confirmation proves every channel of that round and the
// earlier ones is subscribed; Subscribe waits for it. go-redis resubscribes
// its channels before anything else on a new connection, so the proof
// holds across reconnects too; a barrier lost with its connection is sent
// again after ResyncInterval.
//
// It uses unsharded SUBSCRIBE, which a Redis Cluster broadcasts to every
// node, so its one PubSub may sit on any node.
type Redis struct {
	rdb        redis.UniversalClient
	log        *events.RedisLog
	names      events.Names
	h          Handler
	logger     *slog.Logger
	opts       RedisOptions
	msgs       <-chan any // the first PubSub's channel; later ones come through swapped
	swapped    chan (<-chan any)
	syncPrefix string // barrier channel names: syncPrefix + round
	probeName  string // this broker's probe channel
	probeSeen  chan uint64

	ctx     context.Context // cancelled by Close; stops the goroutines
	cancel  context.CancelFunc
	wg      sync.WaitGroup // the reconciler, the delivery loop, the classic worker
	kick    chan struct{}  // capacity 1: wakes the reconciler
	refill  chan struct{}  // capacity 1: wakes the refiller
	filled  chan refillResult
	classic chan []byte   // nil unless opts.Classic
	done    chan struct{} // closed by Close: wakes waiting Subscribe calls

	// mu guards the fields below. It is never held across network I/O or
	// Handler calls.
	mu        sync.Mutex
	closed    bool
	ps        *redis.PubSub        // the current pub/sub connection
	awaiting  map[string]*redisSub // subs with waitSub set, by pub/sub name
	subs      map[string]*redisSub // by pub/sub channel name
	dirty     map[string]struct{}  // subs whose refs crossed zero or need resending
	live      int                  // Herald channels with refs > 0
	nextRound uint64               // number the reconciler's next round gets
	doneRound uint64               // highest round whose barrier Redis confirmed
	toRefill  map[string]struct{}  // pub/sub names whose baseline or refill read is due

	stats redisCounters
}

// redisSub is the state of one pub/sub channel.
type redisSub struct {
	channel string // Herald channel; "" for the classic ingress
	refs    int
	round   uint64 // round whose SUBSCRIBE carried it; 0 while not sent

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
	replacements                               atomic.Uint64
	converted, dropped, invalid, publishFailed atomic.Uint64
}

// NewRedis returns a running Redis broker. rdb carries pub/sub and Ping;
// log is the publish path (also for classic ingress); names maps Herald
// channels to pub/sub channels; h receives the frames. A nil logger
// discards. Close stops it; rdb stays open, it belongs to the caller.
func NewRedis(rdb redis.UniversalClient, log *events.RedisLog, names events.Names, h Handler, logger *slog.Logger, opts RedisOptions) *Redis {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.ClassicQueue <= 0 {
		opts.ClassicQueue = 1024
	}
	if opts.ReceiveBuffer <= 0 {
		opts.ReceiveBuffer = 1024
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
		syncPrefix: names.Prefix + "herald:sync:",
		probeName:  names.Prefix + "herald:probe:" + rand.Text(),
		probeSeen:  make(chan uint64, 1),
		swapped:    make(chan (<-chan any)),
		ctx:        ctx, cancel: cancel,
		kick:      make(chan struct{}, 1),
		refill:    make(chan struct{}, 1),
		filled:    make(chan refillResult),
		done:      make(chan struct{}),
		subs:      make(map[string]*redisSub),
		dirty:     make(map[string]struct{}),
		nextRound: 1,
		toRefill:  make(map[string]struct{}),
		awaiting:  make(map[string]*redisSub),
	}
	b.ps = rdb.Subscribe(ctx)
	b.msgs = b.ps.ChannelWithSubscriptions(redis.WithChannelSize(opts.ReceiveBuffer))
	if opts.Classic {
		b.classic = make(chan []byte, opts.ClassicQueue)
		b.subs[events.ClassicChannel] = &redisSub{refs: 1}
		b.dirty[events.ClassicChannel] = struct{}{}
		b.wg.Go(b.convertClassic)
	}
	b.subs[b.probeName] = &redisSub{refs: 1}
	b.dirty[b.probeName] = struct{}{}
	b.wg.Go(b.probe)
	b.wg.Go(b.reconcile)
	b.wg.Go(b.refiller)
	b.wg.Go(b.receive)
	b.wake()
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
// the pub/sub connection and waits for the broker's goroutines. Calling it
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
	ps := b.ps
	b.mu.Unlock()
	err := ps.Close() // ends the delivery loop, which drains go-redis's channel until then
	b.wg.Wait()
	if err != nil {
		return fmt.Errorf("close redis pub/sub: %w", err)
	}
	return nil
}

// Stats returns the broker's counters.
func (b *Redis) Stats() RedisStats {
	b.mu.Lock()
	live := b.live
	b.mu.Unlock()
	c := &b.stats
	return RedisStats{
		Channels:         live,
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
	}
}

func (b *Redis) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}
