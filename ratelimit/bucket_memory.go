package ratelimit

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"
)

// MemoryTokenBucket is the in-memory twin of [TokenBucket] for a single
// process: the same arithmetic, at millisecond resolution, on an injected
// clock. It is safe for concurrent use; memory is bounded by the buckets
// that are not full.
type MemoryTokenBucket struct {
	cfg TokenBucketConfig
	now func() time.Time

	mu      sync.Mutex
	buckets map[string]bucketState // guarded by mu; a missing bucket is full
	sweepAt int                    // guarded by mu
}

type bucketState struct {
	tokens float64
	last   int64 // ms since the epoch
}

var _ Limiter = (*MemoryTokenBucket)(nil)

// NewMemoryTokenBucket returns an in-memory token bucket reading time from
// now (nil: time.Now). cfg.Prefix is ignored. It reports an error wrapping
// ErrInvalidArgument for a bad cfg.
func NewMemoryTokenBucket(cfg TokenBucketConfig, now func() time.Time) (*MemoryTokenBucket, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if now == nil {
		now = time.Now
	}
	return &MemoryTokenBucket{cfg: cfg, now: now, buckets: make(map[string]bucketState), sweepAt: minSweep}, nil
}

// Allow is AllowN(ctx, key, 1).
func (b *MemoryTokenBucket) Allow(ctx context.Context, key string) (Result, error) {
	return b.AllowN(ctx, key, 1)
}

// AllowN behaves as [TokenBucket.AllowN]; besides a bad n it fails only
// when ctx is done.
func (b *MemoryTokenBucket) AllowN(ctx context.Context, key string, n int) (Result, error) {
	if err := b.cfg.checkCost(n); err != nil {
		return Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("ratelimit: token bucket: %w", err)
	}
	now := b.now().UnixMilli()
	rate, burst, cost := b.cfg.Rate, float64(b.cfg.Burst), float64(n)

	b.mu.Lock()
	defer b.mu.Unlock()
	b.sweepLocked(now)
	s, ok := b.buckets[key]
	if !ok {
		s = bucketState{tokens: burst, last: now}
	}
	tokens := refill(s, now, rate, burst)
	allowed := tokens >= cost
	var retry float64
	if allowed {
		tokens -= cost
	} else {
		retry = max(1, math.Ceil((cost-tokens)*1000/rate))
	}
	b.buckets[key] = bucketState{tokens: tokens, last: now}
	whole := math.Floor(tokens)
	var reset float64
	if tokens < burst {
		reset = max(1, math.Ceil((whole+1-tokens)*1000/rate))
	}
	return bucketResult(allowed, b.cfg.Burst, int64(whole), int64(reset), int64(retry)), nil
}

// refill is the script's refill: a lastRefill in the future counts as now.
func refill(s bucketState, now int64, rate, burst float64) float64 {
	last := min(s.last, now)
	return max(0, min(burst, s.tokens+float64(now-last)*rate/1000))
}

// sweepLocked forgets buckets that have refilled, once the map has doubled
// since the last sweep.
func (b *MemoryTokenBucket) sweepLocked(now int64) {
	if len(b.buckets) < b.sweepAt {
		return
	}
	burst := float64(b.cfg.Burst)
	for k, s := range b.buckets {
		if refill(s, now, b.cfg.Rate, burst) >= burst {
			delete(b.buckets, k)
		}
	}
	b.sweepAt = max(minSweep, 2*len(b.buckets))
}
