package ratelimit

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of ConcurrencyConfig.
const (
	DefaultLeaseTTL              = 30 * time.Second
	DefaultConcurrencyRetryAfter = 5 * time.Second
)

// ConcurrencyConfig configures a concurrency limiter, in Redis or in memory.
type ConcurrencyConfig struct {
	// Prefix is the prefix of Herald's own Redis keys (HERALD_KEY_PREFIX):
	// a user's slots live in the sorted set Prefix+"herald:conns:"+user.
	// Default empty.
	Prefix string
	// Replica names this process in the lease members it writes
	// ("{Replica}:{random}"), for people reading Redis. Default: random.
	Replica string
	// LeaseTTL bounds how long the slots of a replica that died without
	// releasing them stay taken. Live replicas renew their leases every
	// LeaseTTL/3 (see [Concurrency.Run]). Default 30 s; the memory twin
	// ignores it: its leases die with the process.
	LeaseTTL time.Duration
	// RetryAfter is the hint (Result.RetryAfter and Reset) given to a
	// refused caller: slots free when their holders leave, not on a
	// schedule. Default 5 s.
	RetryAfter time.Duration
}

func (c *ConcurrencyConfig) check() error {
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.LeaseTTL < 3*time.Millisecond {
		return fmt.Errorf("lease ttl %v, want ≥ 3ms: %w", c.LeaseTTL, ErrInvalidArgument)
	}
	if c.RetryAfter == 0 {
		c.RetryAfter = DefaultConcurrencyRetryAfter
	}
	if c.RetryAfter < 0 {
		return fmt.Errorf("retry after %v, want > 0: %w", c.RetryAfter, ErrInvalidArgument)
	}
	if c.Replica == "" {
		c.Replica = rand.Text()[:8]
	}
	return nil
}

func checkLimit(limit int) error {
	if limit < 1 {
		return fmt.Errorf("ratelimit: concurrency limit %d, want ≥ 1: %w", limit, ErrInvalidArgument)
	}
	return nil
}

// concResult builds the Result of both concurrency limiters.
func concResult(allowed bool, limit int, count int64, retryAfter time.Duration) Result {
	r := Result{Allowed: allowed, Limit: limit, Remaining: max(limit-int(count), 0)}
	if !allowed {
		r.Reset, r.RetryAfter = retryAfter, retryAfter
	}
	return r
}

// A Lease is one slot held by [Concurrency.Acquire] (or the memory twin's).
// Give it back with Release on the limiter that issued it. The zero Lease
// holds nothing; releasing it is a no-op.
type Lease struct {
	user   string
	member string
}

// acquireScript takes a slot if the user holds fewer than limit live ones, in
// one atomic step on Redis's clock. Each member's score is its lease's
// expiry; expired leases (their replica stopped renewing) are dropped before
// counting. A member already present is a go-redis retry of this very call:
// it is admitted again without counting twice. The key expires with its
// last lease.
//
// KEYS[1] the user's sorted set; ARGV[1] limit; ARGV[2] lease ttl, ms;
// ARGV[3] member. Returns {allowed 0|1, slots held after}.
var acquireScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local count = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return {1, count}
end
if count >= tonumber(ARGV[1]) then
  return {0, count}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(top[2]) + 1)
return {1, count + 1}
`)

// Concurrency limits the slots a user holds at once across every replica
// sharing a Redis, such as open sockets per user. A slot is a member of the
// user's sorted set scored by its lease's expiry; [Concurrency.Run] renews
// this replica's leases every LeaseTTL/3, so the slots of a replica that
// dies free themselves within LeaseTTL, while Release frees a slot at once.
// Decisions run in one script on the Redis server's clock. It is safe for
// concurrent use.
type Concurrency struct {
	rdb redis.Cmdable
	cfg ConcurrencyConfig
	log *slog.Logger

	mu   sync.Mutex
	held map[string]string // guarded by mu; member → user of every lease to renew
}

// NewConcurrency returns a concurrency limiter on rdb that logs renewal
// trouble to log (nil: discard). Call Run for as long as leases are held.
// It reports an error wrapping ErrInvalidArgument for a bad cfg.
func NewConcurrency(rdb redis.Cmdable, cfg ConcurrencyConfig, log *slog.Logger) (*Concurrency, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Concurrency{rdb: rdb, cfg: cfg, log: log, held: make(map[string]string)}, nil
}

// Key returns the Redis key that holds user's slots.
func (c *Concurrency) Key(user string) string { return c.cfg.Prefix + "herald:conns:" + user }

// Acquire takes one of user's limit slots if one is free, and returns its
// lease. When refused, the Lease is zero and Result.RetryAfter is the
// configured hint. limit is per call, so it may depend on the user; it must
// be ≥ 1, or the error wraps ErrInvalidArgument. On an error the slot may
// still have been taken in Redis (the reply was lost); unrenewed, it frees
// itself within LeaseTTL.
func (c *Concurrency) Acquire(ctx context.Context, user string, limit int) (Lease, Result, error) {
	if err := checkLimit(limit); err != nil {
		return Lease{}, Result{}, err
	}
	l := Lease{user: user, member: c.cfg.Replica + ":" + rand.Text()}
	v, err := acquireScript.Run(ctx, c.rdb, []string{c.Key(user)}, limit, c.cfg.LeaseTTL.Milliseconds(), l.member).Int64Slice()
	if err != nil {
		return Lease{}, Result{}, fmt.Errorf("ratelimit: concurrency acquire script: %w", err)
	}
	if len(v) != 2 {
		return Lease{}, Result{}, fmt.Errorf("ratelimit: concurrency acquire script returned %d values, want 2", len(v))
	}
	r := concResult(v[0] == 1, limit, v[1], c.cfg.RetryAfter)
	if !r.Allowed {
		return Lease{}, r, nil
	}
	c.mu.Lock()
	c.held[l.member] = user
	c.mu.Unlock()
	return l, r, nil
}

// Release frees the lease's slot at once. Releasing a lease twice, or the
// zero Lease, is a no-op. The lease stops being renewed even when Release
// fails, so its slot then frees itself within LeaseTTL. Pass a context that
// outlives the connection being closed.
func (c *Concurrency) Release(ctx context.Context, l Lease) error {
	if l.member == "" {
		return nil
	}
	c.mu.Lock()
	delete(c.held, l.member)
	c.mu.Unlock()
	if err := c.rdb.ZRem(ctx, c.Key(l.user), l.member).Err(); err != nil {
		return fmt.Errorf("ratelimit: concurrency release: %w", err)
	}
	return nil
}

// Held reports how many leases this limiter holds and renews.
func (c *Concurrency) Held() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.held)
}
