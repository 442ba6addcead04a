package herald

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
)

// RedisConfig holds the tunables of a [RedisPublisher]. They must match the
// gateway's settings: the history window is enforced when an event is
// published, and the key prefix decides which keys the gateway reads.
type RedisConfig struct {
	// HistorySize is how many events each channel keeps for clients that
	// resume (the gateway's HERALD_HISTORY_SIZE). Zero or negative: 100.
	HistorySize int64

	// HistoryTTL is how long a channel's events are kept for resume, and how
	// long an idempotency key is remembered (the gateway's
	// HERALD_HISTORY_TTL). Zero or negative: 10 minutes.
	HistoryTTL time.Duration

	// RecordTTL is how long a channel's newest event id is remembered
	// after its last publish, so that a resume stays exact after the
	// history expired (the gateway's HERALD_RECORD_TTL). Zero: 24 hours.
	RecordTTL time.Duration

	// KeyPrefix is prepended to the Redis keys and pub/sub channels Herald
	// owns ("herald:…"), when several Heralds share one Redis. Default "".
	KeyPrefix string

	// ReplicaAcks is how many replicas of a Redis primary must have a
	// publish's events before the call succeeds and any subscriber gets
	// them (the gateways' HERALD_REDIS_REPLICA_ACKS: 1 under Sentinel and
	// on a cluster, so that a failover loses no acknowledged event). A
	// publish no replica confirms within ReplicaTimeout (default 1s) is
	// tried again for a few seconds, then fails with [ErrNotReplicated].
	// Default 0: publish at once. Publishers and gateways may differ here
	// without reordering a channel: a publish without acks queues behind
	// events of its partition that wait for replicas (docs/DELIVERY.md).
	ReplicaAcks    int
	ReplicaTimeout time.Duration

	// Publisher names this publisher for idempotency: keys given with
	// [IdempotencyKey] are scoped to it, so publishers with different
	// names never collide, and publishers that share a name (the replicas
	// of one worker) share their keys. Same characters as an idempotency
	// key. Default "default".
	Publisher string
}

// RedisPublisher publishes events by writing them to the Redis that the
// gateway replicas share. Each call is atomic: the events are appended to
// their channels' histories, trimmed to the history window and published
// to the gateways, all or nothing, by the same server-side script the
// gateway runs for its own publishes. Calls made concurrently share script
// calls (one Redis round trip and script run for many events), which is
// what keeps Redis's cost per event low under load.
//
// A call that meets a transient Redis error (a Redis loading or failing
// over, a refused connection; with an [IdempotencyKey] also a broken
// connection) is retried a few times over about 700 ms, then fails with
// the error: nothing is dropped silently, and retries never publish twice.
// Give calls whose repeats after a crash or a timeout matter a key of
// their own, such as the job id.
//
// A RedisPublisher is safe for concurrent use. It does not own the client:
// closing the client is up to the caller.
//
// Build the client for the deployment the gateways use (their
// HERALD_REDIS_MODE): redis.NewClient for a single server (redis.ParseURL),
// redis.NewFailoverClient for a primary under Sentinel
// (redis.ParseFailoverURL), redis.NewClusterClient for a Redis Cluster
// (redis.ParseClusterURL). Given a *redis.ClusterClient, the publisher
// publishes the way gateways in cluster mode subscribe: every key of a
// channel lives in one hash slot, frames go out with SPUBLISH, and a batch
// that spans channels of several slots is published as one script call per
// slot — atomic per slot (and so per channel), not as a whole; a retry with
// the same [IdempotencyKey] completes what a failed call left out. Do not
// use redis.NewFailoverClusterClient: it is a *redis.ClusterClient to a
// server that is not a cluster.
type RedisPublisher struct {
	log   *events.RedisLog
	scope string
}

// NewRedisPublisher returns a publisher that writes through rdb (a single
// node, failover or cluster client, see [RedisPublisher]), with the history
// window and key prefix of cfg.
//
// A Publisher name that is not 1 to 200 printable ASCII characters without
// spaces makes every call fail with a *[FieldError] for "publisher".
func NewRedisPublisher(rdb redis.UniversalClient, cfg RedisConfig) *RedisPublisher {
	names := events.Names{Prefix: cfg.KeyPrefix}
	_, sharded := rdb.(*redis.ClusterClient)
	log := events.NewRedisLog(rdb, names, events.LogConfig{
		HistorySize: cfg.HistorySize, HistoryTTL: cfg.HistoryTTL, RecordTTL: cfg.RecordTTL,
		Sharded: sharded, ReplicaAcks: cfg.ReplicaAcks, ReplicaTimeout: cfg.ReplicaTimeout,
	})
	scope := ""
	if events.CheckIdemKey(cfg.Publisher) == nil {
		scope = events.PublisherScope(cfg.Publisher)
	}
	return &RedisPublisher{log: log, scope: scope}
}

// Publish publishes one event on channel and returns its event id. Invalid
// input returns a *[FieldError] and writes nothing.
func (p *RedisPublisher) Publish(ctx context.Context, channel, event string, data any, opts ...PublishOption) (string, error) {
	ids, err := p.publish(ctx, []Message{{Channel: channel, Event: event, Data: data}}, true, opts)
	if err != nil {
		return "", err
	}
	return ids[0], nil
}

// PublishBatch publishes msgs atomically in one script run (on a Redis
// Cluster: one per hash slot, see [RedisPublisher]) and returns their event
// ids in order. Invalid input returns a *[FieldError] naming the
// first bad field and writes nothing.
func (p *RedisPublisher) PublishBatch(ctx context.Context, msgs []Message, opts ...PublishOption) ([]string, error) {
	return p.publish(ctx, msgs, false, opts)
}

func (p *RedisPublisher) publish(ctx context.Context, msgs []Message, single bool, opts []PublishOption) ([]string, error) {
	o := ApplyPublishOptions(opts...)
	pubs, err := encode(msgs, single, o)
	if err != nil {
		return nil, err
	}
	if p.scope == "" {
		return nil, &FieldError{Field: "publisher", Reason: events.ErrBadIdemKey.Error()}
	}
	key := events.ScopedKey(p.scope, o.IdempotencyKey)
	for attempt := 1; ; attempt++ {
		ids, err := p.log.Append(ctx, key, pubs...)
		if err == nil {
			return ids, nil
		}
		if attempt == publishAttempts || !transient(err, key != "") {
			return nil, fmt.Errorf("herald: %w", err)
		}
		t := time.NewTimer(time.Duration(attempt*attempt) * 50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("herald: %w (after %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// publishAttempts is how often a publish is tried when Redis answers with
// a transient error; the waits between tries are 50, 200, 450 ms.
const publishAttempts = 4

// transient reports whether err may go away by itself and the call may be
// tried again: a Redis that is loading, failing over or read-only for a
// moment, or a refused connection, all of which mean the script did not
// run; with an idempotency key (keyed) also a broken connection, after
// which the script may or may not have run, and missing replica
// confirmations, after which its events may still go out. (go-redis
// itself already retried a broken connection with the script call's own
// key, which never publishes twice.)
func transient(err error, keyed bool) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed) {
		return false
	}
	for _, p := range []string{"LOADING", "READONLY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	var oe *net.OpError
	if errors.Is(err, syscall.ECONNREFUSED) || (errors.As(err, &oe) && oe.Op == "dial") {
		return true
	}
	var ne net.Error
	return keyed && (errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, events.ErrNotReplicated))
}
