package ratelimit

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultWindowPrefix is the key prefix of the classic sliding window,
// ratelimit:{id} (PROTOCOL §1).
const DefaultWindowPrefix = "ratelimit:"

// SlidingWindowConfig configures a sliding-window limiter, in Redis or in
// memory.
type SlidingWindowConfig struct {
	Limit  int           // requests admitted per window per key; ≥ 1, required
	Window time.Duration // length of the window; ≥ 1 ms, whole milliseconds count
	Prefix string        // key prefix; empty means DefaultWindowPrefix ("ratelimit:")
}

func (c *SlidingWindowConfig) check() error {
	if c.Limit < 1 {
		return fmt.Errorf("sliding window limit %d, want ≥ 1: %w", c.Limit, ErrInvalidArgument)
	}
	if c.Window < time.Millisecond {
		return fmt.Errorf("sliding window %v, want ≥ 1ms: %w", c.Window, ErrInvalidArgument)
	}
	if c.Prefix == "" {
		c.Prefix = DefaultWindowPrefix
	}
	return nil
}

// slidingScript is the whole decision of one request, atomic in Redis:
// forget what left the window, count what is left, record the request only
// when it is under the limit, and keep the key no longer than its newest
// entry needs. A refused request leaves no trace, so a client that keeps
// hammering gets in again as soon as its old requests leave the window.
//
// The member is unique per request and chosen by the caller, so a retry of
// a request that already ran (go-redis retries after a lost reply) finds
// its own member and answers "admitted" again without counting twice.
//
// An entry with score t counts for now in (t, t+window); the clock is
// Redis's TIME, in milliseconds.
//
// KEYS[1] the sorted set; ARGV[1] limit; ARGV[2] window, ms; ARGV[3] member.
// Returns {allowed 0|1, count after, reset ms, retry ms}.
var slidingScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  allowed = 1
elseif count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  count = count + 1
  allowed = 1
end
local reset, retry = 0, 0
if count > 0 then
  reset = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) + window - now
end
if allowed == 0 then
  retry = tonumber(redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')[2]) + window - now
end
return {allowed, count, reset, retry}
`)

// SlidingWindow admits at most Limit requests per key in any Window,
// counting only admitted requests, on the classic ratelimit:{id} sorted set
// shared by every replica (and by apps that still run the classic snippet).
// Each decision is one script on the Redis server, timed by Redis's clock.
// It is safe for concurrent use.
type SlidingWindow struct {
	rdb redis.Scripter
	cfg SlidingWindowConfig
}

var _ Limiter = (*SlidingWindow)(nil)

// NewSlidingWindow returns a sliding-window limiter on rdb. It reports an
// error wrapping ErrInvalidArgument for a bad cfg.
func NewSlidingWindow(rdb redis.Scripter, cfg SlidingWindowConfig) (*SlidingWindow, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	return &SlidingWindow{rdb: rdb, cfg: cfg}, nil
}

// Key returns the Redis key that holds key's window.
func (w *SlidingWindow) Key(key string) string { return w.cfg.Prefix + key }

// Allow records one request for key if fewer than Limit were admitted in
// the last Window, and says so. A refused request is not recorded. Errors
// (Redis unreachable, ctx done) come with a zero Result; they never name
// the key, which may be derived from a secret.
func (w *SlidingWindow) Allow(ctx context.Context, key string) (Result, error) {
	v, err := slidingScript.Run(ctx, w.rdb, []string{w.Key(key)},
		w.cfg.Limit, w.cfg.Window.Milliseconds(), rand.Text()).Int64Slice()
	if err != nil {
		return Result{}, fmt.Errorf("ratelimit: sliding window script: %w", err)
	}
	if len(v) != 4 {
		return Result{}, fmt.Errorf("ratelimit: sliding window script returned %d values, want 4", len(v))
	}
	return windowResult(v[0] == 1, w.cfg.Limit, v[1], v[2], v[3]), nil
}

// windowResult builds the Result of both sliding windows from the same
// numbers, so the twins cannot drift apart.
func windowResult(allowed bool, limit int, count, resetMs, retryMs int64) Result {
	r := Result{Allowed: allowed, Limit: limit, Remaining: max(limit-int(count), 0), Reset: ms(resetMs)}
	if !allowed {
		r.RetryAfter = ms(retryMs)
	}
	return r
}
