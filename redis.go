package herald

import (
	"context"
	"fmt"
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

	// KeyPrefix is prepended to the Redis keys and pub/sub channels Herald
	// owns ("herald:…"), when several Heralds share one Redis. Default "".
	KeyPrefix string
}

// RedisPublisher publishes events by writing them to the Redis that the
// gateway replicas share. Each call is one atomic server-side script: the
// events are appended to their channels' history streams, trimmed to the
// history window and published to the gateways, all or nothing. It is the
// same script the gateway runs for its own publishes.
//
// The go-redis client retries a command whose connection failed (its
// MaxRetries option, 3 by default), even when the command had already
// reached Redis, so a call without an idempotency key may, rarely, publish
// its events twice. Give calls whose duplicates matter an [IdempotencyKey].
//
// A RedisPublisher is safe for concurrent use. It does not own the client:
// closing the client is up to the caller.
//
// The script touches one key per channel in the batch: on Redis Cluster all
// of them must hash to one slot, which Herald's key names do not arrange
// yet, so use a single-node or Sentinel Redis.
type RedisPublisher struct {
	log *events.RedisLog
}

// NewRedisPublisher returns a publisher that writes through rdb, a single
// node or failover client, with the history window and key prefix of cfg.
func NewRedisPublisher(rdb redis.UniversalClient, cfg RedisConfig) *RedisPublisher {
	names := events.Names{Prefix: cfg.KeyPrefix}
	return &RedisPublisher{log: events.NewRedisLog(rdb, names, cfg.HistorySize, cfg.HistoryTTL)}
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

// PublishBatch publishes msgs atomically in one script run and returns
// their event ids in order. Invalid input returns a *[FieldError] naming the
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
	ids, err := p.log.Append(ctx, o.IdempotencyKey, pubs...)
	if err != nil {
		return nil, fmt.Errorf("herald: %w", err)
	}
	return ids, nil
}
