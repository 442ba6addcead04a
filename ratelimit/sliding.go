package ratelimit

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/batch"
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

// slidingScript decides requests, in order, atomically in Redis: forget
// what left the window, count what is left, and record each request only
// when it is under the limit; keep the key no longer than its newest entry
// needs. A refused request leaves no trace, so a client that keeps
// hammering gets in again as soon as its old requests leave the window.
//
// Each member is unique per request and chosen by the caller, so a retry of
// a request that already ran (go-redis retries after a lost reply) finds
// its own member and answers "admitted" again without counting twice.
//
// An entry with score t counts for now in (t, t+window); the clock is
// Redis's TIME, in milliseconds.
//
// KEYS[1] the sorted set; ARGV[1] limit; ARGV[2] window, ms; ARGV[3…] the
// requests' members. Returns per request {allowed 0|1, count after, reset
// ms, retry ms}, flattened.
var slidingScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local added = false
local out = {}
for i = 3, #ARGV do
  local allowed = 0
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    allowed = 1
  elseif count < limit then
    redis.call('ZADD', KEYS[1], now, ARGV[i])
    count = count + 1
    allowed = 1
    added = true
  end
  local reset, retry = 0, 0
  if count > 0 then
    reset = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) + window - now
  end
  if allowed == 0 then
    retry = tonumber(redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')[2]) + window - now
  end
  out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = allowed, count, reset, retry
end
if added then redis.call('PEXPIRE', KEYS[1], window) end
return out
`)

// SlidingWindow admits at most Limit requests per key in any Window,
// counting only admitted requests, on the classic ratelimit:{id} sorted set
// shared by every replica (and by apps that still run the classic snippet).
// Decisions are scripts on the Redis server, timed by Redis's clock, each
// on one key; the requests for a key that arrive while a call for it is
// under way are decided together by the next call, in arrival order. On
// one server (or Sentinel's primary) every key's requests share one queue:
// a call is one pipeline with a script call per key, so a connect storm
// from many client IPs costs a round trip per call, not per IP. With any
// other client (a cluster's, a Ring's) each key keeps a queue of its own,
// so that a slow node holds up only its own keys. It is safe for
// concurrent use.
type SlidingWindow struct {
	rdb   redis.Scripter
	one   *redis.Client // rdb when it is one server: every key's requests share a queue
	cfg   SlidingWindowConfig
	calls batch.Combiner[windowRequest, windowDecision] // by key, or all under "" (one)
}

// windowRequest is one request for key: member is its unique entry in the
// window.
type windowRequest struct{ key, member string }

// windowDecision is the outcome of one windowRequest.
type windowDecision struct {
	r   Result
	err error
}

var _ Limiter = (*SlidingWindow)(nil)

// NewSlidingWindow returns a sliding-window limiter on rdb. It reports an
// error wrapping ErrInvalidArgument for a bad cfg.
func NewSlidingWindow(rdb redis.Scripter, cfg SlidingWindowConfig) (*SlidingWindow, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	w := &SlidingWindow{rdb: rdb, cfg: cfg}
	w.one, _ = rdb.(*redis.Client)
	// One call under way per queue keeps each key's decisions in arrival
	// order; a call carries up to maxBucketBatch requests.
	w.calls = batch.Combiner[windowRequest, windowDecision]{Run: w.run, MaxWeight: maxBucketBatch, Timeout: bucketCallTimeout}
	return w, nil
}

// Key returns the Redis key that holds key's window.
func (w *SlidingWindow) Key(key string) string { return w.cfg.Prefix + key }

// Allow records one request for key if fewer than Limit were admitted in
// the last Window, and says so. A refused request is not recorded. Errors
// (Redis unreachable, ctx done) come with a zero Result; they never name
// the key, which may be derived from a secret.
func (w *SlidingWindow) Allow(ctx context.Context, key string) (Result, error) {
	queue := key
	if w.one != nil {
		queue = ""
	}
	d, err := w.calls.Do(ctx, queue, windowRequest{key: key, member: rand.Text()})
	if err == nil {
		err = d.err
	}
	if err != nil {
		return Result{}, fmt.Errorf("ratelimit: sliding window: %w", err)
	}
	return d.r, nil
}

// run decides reqs in one call: a script call per key, with that key's
// members in arrival order; several keys (one server only) in one
// pipeline.
func (w *SlidingWindow) run(ctx context.Context, _ string, reqs []windowRequest) ([]windowDecision, error) {
	var keys []string        // in order of first arrival
	at := map[string][]int{} // key → its requests' positions in reqs
	for i, r := range reqs {
		if _, ok := at[r.key]; !ok {
			keys = append(keys, r.key)
		}
		at[r.key] = append(at[r.key], i)
	}
	args := func(key string) []any {
		a := make([]any, 0, 2+len(at[key]))
		a = append(a, w.cfg.Limit, w.cfg.Window.Milliseconds())
		for _, i := range at[key] {
			a = append(a, reqs[i].member)
		}
		return a
	}
	cmds := make([]*redis.Cmd, len(keys))
	var loadErr error
	if w.one == nil {
		cmds[0] = slidingScript.Run(ctx, w.rdb, []string{w.Key(keys[0])}, args(keys[0])...) // a queue per key
	} else {
		// Safe to repeat (pipelined may): a member already recorded is
		// admitted again without counting twice. A failed pipeline fails
		// each of its commands.
		loadErr = pipelined(ctx, w.one, slidingScript, func(p redis.Pipeliner) {
			for k, key := range keys {
				cmds[k] = slidingScript.EvalSha(ctx, p, []string{w.Key(key)}, args(key)...)
			}
		})
	}
	out := make([]windowDecision, len(reqs))
	for k, key := range keys {
		v, err := cmds[k].Int64Slice()
		switch {
		case redis.HasErrorPrefix(err, "NOSCRIPT") && errors.Is(loadErr, errScriptLoad):
			err = loadErr
		case err == nil && len(v) != 4*len(at[key]):
			err = fmt.Errorf("returned %d values, want %d", len(v), 4*len(at[key]))
		}
		for n, i := range at[key] {
			if err != nil {
				out[i].err = fmt.Errorf("script: %w", err)
				continue
			}
			r := v[4*n:]
			out[i].r = windowResult(r[0] == 1, w.cfg.Limit, r[1], r[2], r[3])
		}
	}
	return out, nil
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
