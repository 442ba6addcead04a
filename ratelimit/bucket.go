package ratelimit

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/batch"
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

// bucketScript refills the bucket for the time since lastRefill, then, for
// each request in turn, spends its n tokens if there are that many, and
// stores the state, in one atomic step on Redis's clock (TIME). A missing
// bucket is full; a lastRefill in the future (written by a client with a
// fast clock) counts as now, and is rewritten, so one skewed writer cannot
// freeze the refill. The state is written on refusal too (nothing spent),
// which repairs such a lastRefill. The key lives until the bucket would be
// full again: a missing key and a full bucket are the same.
//
// The fields are the classic ones: tokens (a decimal, possibly fractional)
// and lastRefill (milliseconds since the epoch).
//
// After the requests it may grant a lease (TokenLease): up to want more
// tokens, taken now and spent by the caller during the next life
// milliseconds. So that spending them later than they left the bucket
// never admits more than the bucket would have, it also burns what the
// bucket would otherwise refill beyond Burst in that time while they are
// out: after a grant of g, tokens + g + rate × life ≤ burst. No grant is
// made (and nothing burnt) unless at least one token is left to lease.
//
// KEYS[1] the hash; ARGV[1] rate, tokens/s; ARGV[2] burst; ARGV[3] lease
// tokens wanted (0: none); ARGV[4] lease life, ms; ARGV[5…] the requests'
// n. Returns per request {allowed 0|1, whole tokens left, reset ms, retry
// ms}, flattened, then {tokens granted, whole tokens left, reset ms}.
var bucketScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'lastRefill')
local tokens = tonumber(v[1]) or burst
local last = tonumber(v[2]) or now
if last > now then last = now end
tokens = math.max(0, math.min(burst, tokens + (now - last) * rate / 1000))
local out = {}
local function left()
  local whole = math.floor(tokens)
  local reset = 0
  if tokens < burst then reset = math.max(1, math.ceil((whole + 1 - tokens) * 1000 / rate)) end
  return whole, reset
end
for i = 5, #ARGV do
  local n = tonumber(ARGV[i])
  local allowed, retry = 0, 0
  if tokens >= n then
    tokens = tokens - n
    allowed = 1
  else
    retry = math.max(1, math.ceil((n - tokens) * 1000 / rate))
  end
  local whole, reset = left()
  out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = allowed, whole, reset, retry
end
local want = tonumber(ARGV[3])
local granted = 0
if want > 0 then
  local burn = math.max(0, tokens + rate * tonumber(ARGV[4]) / 1000 - burst)
  granted = math.min(want, math.floor(tokens - burn))
  if granted > 0 then tokens = tokens - granted - burn else granted = 0 end
end
local whole, reset = left()
out[#out + 1], out[#out + 2], out[#out + 3] = granted, whole, reset
redis.call('HSET', KEYS[1], 'tokens', tokens, 'lastRefill', now)
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) * 1000 / rate)))
return out
`)

// TokenBucket admits requests while the key's bucket holds tokens: Rate
// tokens per second drip into a bucket of Burst, and each request spends
// one (or n). It keeps the classic bucket:{id} hash shared by every replica
// (and by apps that still run the classic snippet), and decides in one
// script on the Redis server's clock, so replicas whose clocks disagree
// still agree. It is safe for concurrent use.
//
// Requests for one key that arrive while its script call is under way wait
// and are decided together by the next one, in arrival order (a busy API
// key costs Redis one script call per round trip, not one per request).
//
// Retries: go-redis may run the script again after a reply was lost. A
// token bucket has no per-request record to recognise the repeat, so such
// a request is charged twice: retries can only make the limit stricter,
// never admit more than Rate and Burst allow. Use a client with
// MaxRetries: -1 if that matters more than riding out a dropped connection.
type TokenBucket struct {
	rdb   redis.Scripter
	cfg   TokenBucketConfig
	calls batch.Combiner[int, Result] // n per request, by key
}

// Limits of one script call of the token bucket.
const (
	maxBucketBatch    = 256
	bucketCallTimeout = 5 * time.Second
)

var _ Limiter = (*TokenBucket)(nil)

// NewTokenBucket returns a token-bucket limiter on rdb. It reports an error
// wrapping ErrInvalidArgument for a bad cfg.
func NewTokenBucket(rdb redis.Scripter, cfg TokenBucketConfig) (*TokenBucket, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	b := &TokenBucket{rdb: rdb, cfg: cfg}
	b.calls = batch.Combiner[int, Result]{Run: b.run, MaxWeight: maxBucketBatch, Timeout: bucketCallTimeout}
	return b, nil
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
// a zero Result; they never name the key. A request whose ctx ends while
// it waits is not decided; one whose ctx ends while its script call is
// under way may still have been charged.
func (b *TokenBucket) AllowN(ctx context.Context, key string, n int) (Result, error) {
	if err := b.cfg.checkCost(n); err != nil {
		return Result{}, err
	}
	r, err := b.calls.Do(ctx, key, n)
	if err != nil {
		return Result{}, fmt.Errorf("ratelimit: token bucket: %w", err)
	}
	return r, nil
}

// run decides the requests ns of key in one script call.
func (b *TokenBucket) run(ctx context.Context, key string, ns []int) ([]Result, error) {
	out, _, err := b.script(ctx, key, ns, 0, 0)
	return out, err
}

// grant is what a script call leased besides deciding its requests.
type grant struct {
	tokens int // tokens leased, to spend within the life asked for
	left   int // whole tokens left in the bucket after the grant
	reset  time.Duration
}

// script decides the requests ns of key in one script call and, when want
// > 0, leases up to want more tokens for life (whole milliseconds).
func (b *TokenBucket) script(ctx context.Context, key string, ns []int, want int, life time.Duration) ([]Result, grant, error) {
	args := make([]any, 0, 4+len(ns))
	args = append(args, b.cfg.Rate, b.cfg.Burst, want, life.Milliseconds())
	for _, n := range ns {
		args = append(args, n)
	}
	v, err := bucketScript.Run(ctx, b.rdb, []string{b.Key(key)}, args...).Int64Slice()
	if err != nil {
		return nil, grant{}, fmt.Errorf("script: %w", err)
	}
	if len(v) != 4*len(ns)+3 {
		return nil, grant{}, fmt.Errorf("script returned %d values, want %d", len(v), 4*len(ns)+3)
	}
	out := make([]Result, len(ns))
	for i := range ns {
		r := v[4*i:]
		out[i] = bucketResult(r[0] == 1, b.cfg.Burst, r[1], r[2], r[3])
	}
	g := v[4*len(ns):]
	return out, grant{tokens: int(g[0]), left: int(g[1]), reset: ms(g[2])}, nil
}

func bucketResult(allowed bool, burst int, whole, resetMs, retryMs int64) Result {
	return Result{Allowed: allowed, Limit: burst, Remaining: int(whole), Reset: ms(resetMs), RetryAfter: ms(retryMs)}
}
