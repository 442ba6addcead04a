package ratelimit

import (
	"context"
	"fmt"
	"math"

	"github.com/redis/go-redis/v9"
)

// DefaultBucketPrefix is the key prefix of the classic token bucket,
// bucket:{id} (PROTOCOL §1).
const DefaultBucketPrefix = "bucket:"

// TokenBucketConfig configures a token-bucket limiter, in Redis or in memory.
type TokenBucketConfig struct {
	Rate   float64 // tokens added per second; > 0, required
	Burst  int     // bucket capacity, the most a key may spend at once; ≥ 1, required
	Prefix string  // key prefix; empty means DefaultBucketPrefix ("bucket:")
}

func (c *TokenBucketConfig) check() error {
	if !(c.Rate > 0) || math.IsInf(c.Rate, 0) {
		return fmt.Errorf("token bucket rate %v, want > 0: %w", c.Rate, ErrInvalidArgument)
	}
	if c.Burst < 1 {
		return fmt.Errorf("token bucket burst %d, want ≥ 1: %w", c.Burst, ErrInvalidArgument)
	}
	if c.Prefix == "" {
		c.Prefix = DefaultBucketPrefix
	}
	return nil
}

func (c *TokenBucketConfig) checkCost(n int) error {
	if n < 1 || n > c.Burst {
		return fmt.Errorf("ratelimit: token bucket cost %d outside 1..%d: %w", n, c.Burst, ErrInvalidArgument)
	}
	return nil
}

// bucketScript refills the bucket for the time since lastRefill, spends n
// tokens if there are that many, and stores the state, in one atomic step
// on Redis's clock (TIME). A missing bucket is full; a lastRefill in the
// future (written by a client with a fast clock) counts as now, and is
// rewritten, so one skewed writer cannot freeze the refill. The state is
// written on refusal too (nothing spent), which repairs such a lastRefill.
// The key lives until the bucket would be full again: a missing key and a
// full bucket are the same.
//
// The fields are the classic ones: tokens (a decimal, possibly fractional)
// and lastRefill (milliseconds since the epoch).
//
// KEYS[1] the hash; ARGV[1] rate, tokens/s; ARGV[2] burst; ARGV[3] n.
// Returns {allowed 0|1, whole tokens left, reset ms, retry ms}.
var bucketScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'lastRefill')
local tokens = tonumber(v[1]) or burst
local last = tonumber(v[2]) or now
if last > now then last = now end
tokens = math.max(0, math.min(burst, tokens + (now - last) * rate / 1000))
local allowed, retry = 0, 0
if tokens >= n then
  tokens = tokens - n
  allowed = 1
else
  retry = math.max(1, math.ceil((n - tokens) * 1000 / rate))
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'lastRefill', now)
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) * 1000 / rate)))
local whole = math.floor(tokens)
local reset = 0
if tokens < burst then reset = math.max(1, math.ceil((whole + 1 - tokens) * 1000 / rate)) end
return {allowed, whole, reset, retry}
`)

// TokenBucket admits requests while the key's bucket holds tokens: Rate
// tokens per second drip into a bucket of Burst, and each request spends
// one (or n). It keeps the classic bucket:{id} hash shared by every replica
// (and by apps that still run the classic snippet), and decides in one
// script on the Redis server's clock, so replicas whose clocks disagree
// still agree. It is safe for concurrent use.
//
// Retries: go-redis may run the script again after a reply was lost. A
// token bucket has no per-request record to recognise the repeat, so such
// a request is charged twice: retries can only make the limit stricter,
// never admit more than Rate and Burst allow. Use a client with
// MaxRetries: -1 if that matters more than riding out a dropped connection.
type TokenBucket struct {
	rdb redis.Scripter
	cfg TokenBucketConfig
}

var _ Limiter = (*TokenBucket)(nil)

// NewTokenBucket returns a token-bucket limiter on rdb. It reports an error
// wrapping ErrInvalidArgument for a bad cfg.
func NewTokenBucket(rdb redis.Scripter, cfg TokenBucketConfig) (*TokenBucket, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	return &TokenBucket{rdb: rdb, cfg: cfg}, nil
}

// Key returns the Redis key that holds key's bucket.
func (b *TokenBucket) Key(key string) string { return b.cfg.Prefix + key }

// Allow is AllowN(ctx, key, 1).
func (b *TokenBucket) Allow(ctx context.Context, key string) (Result, error) {
	return b.AllowN(ctx, key, 1)
}

// AllowN spends n tokens of key's bucket if it holds n, and says so; a
// refused request spends nothing. n must be within 1..Burst, or the error
// wraps ErrInvalidArgument. Errors (Redis unreachable, ctx done) come with
// a zero Result; they never name the key.
func (b *TokenBucket) AllowN(ctx context.Context, key string, n int) (Result, error) {
	if err := b.cfg.checkCost(n); err != nil {
		return Result{}, err
	}
	v, err := bucketScript.Run(ctx, b.rdb, []string{b.Key(key)}, b.cfg.Rate, b.cfg.Burst, n).Int64Slice()
	if err != nil {
		return Result{}, fmt.Errorf("ratelimit: token bucket script: %w", err)
	}
	if len(v) != 4 {
		return Result{}, fmt.Errorf("ratelimit: token bucket script returned %d values, want 4", len(v))
	}
	return bucketResult(v[0] == 1, b.cfg.Burst, v[1], v[2], v[3]), nil
}

func bucketResult(allowed bool, burst int, whole, resetMs, retryMs int64) Result {
	return Result{Allowed: allowed, Limit: burst, Remaining: int(whole), Reset: ms(resetMs), RetryAfter: ms(retryMs)}
}
