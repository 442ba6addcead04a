package ratelimittest

import (
	"context"
	"testing"
	"time"

	"github.com/heraldgw/herald/ratelimit"
)

// slow is a refill rate that adds less than a token during a test: one
// token every slowToken.
const (
	slow      = 0.001
	slowToken = 1000 * time.Second
)

// RunTokenBucket runs the token-bucket suite. newLimiter returns a limiter
// for cfg; limiters of one run may share a backend.
func RunTokenBucket(t *testing.T, newLimiter func(t *testing.T, cfg ratelimit.TokenBucketConfig) Bucket) {
	ctx := context.Background()
	allowN := func(t *testing.T, b Bucket, key string, n int) ratelimit.Result {
		t.Helper()
		r, err := b.AllowN(ctx, key, n)
		if err != nil {
			t.Fatalf("AllowN(%d): %v", n, err)
		}
		return r
	}
	t.Run("Burst", func(t *testing.T) {
		key := keyer(t)("k")
		b := newLimiter(t, ratelimit.TokenBucketConfig{Rate: slow, Burst: 5})
		for i := range 5 {
			r := mustAllow(t, b, key)
			check(t, "within the burst", r, true, 5, 4-i)
			within(t, "Reset", r.Reset, slowToken)
		}
		r := mustAllow(t, b, key)
		check(t, "burst spent", r, false, 5, 0)
		within(t, "RetryAfter", r.RetryAfter, slowToken)
	})
	t.Run("AllowN", func(t *testing.T) {
		key := keyer(t)("k")
		b := newLimiter(t, ratelimit.TokenBucketConfig{Rate: slow, Burst: 5})
		check(t, "3 of 5", allowN(t, b, key, 3), true, 5, 2)
		check(t, "3 of 2", allowN(t, b, key, 3), false, 5, 2) // spends nothing
		check(t, "2 of 2", allowN(t, b, key, 2), true, 5, 0)
	})
	t.Run("Cost", func(t *testing.T) {
		b := newLimiter(t, ratelimit.TokenBucketConfig{Rate: slow, Burst: 5})
		for _, n := range []int{0, -1, 6} {
			_, err := b.AllowN(ctx, keyer(t)("k"), n)
			wantInvalid(t, "AllowN outside 1..burst", err)
		}
	})
	t.Run("Refill", func(t *testing.T) {
		key := keyer(t)("k")
		b := newLimiter(t, ratelimit.TokenBucketConfig{Rate: 50, Burst: 2})
		for mustAllow(t, b, key).Allowed {
		}
		WaitFor(t, 5*time.Second, "a token refilled", func() bool { return mustAllow(t, b, key).Allowed })
		WaitFor(t, 5*time.Second, "bucket full again", func() bool {
			r, err := b.AllowN(ctx, key, 2)
			if err != nil {
				t.Fatalf("AllowN: %v", err)
			}
			return r.Allowed
		})
	})
	t.Run("KeysIndependent", func(t *testing.T) {
		k := keyer(t)
		b := newLimiter(t, ratelimit.TokenBucketConfig{Rate: slow, Burst: 1})
		check(t, "a", mustAllow(t, b, k("a")), true, 1, 0)
		check(t, "b", mustAllow(t, b, k("b")), true, 1, 0)
		check(t, "a again", mustAllow(t, b, k("a")), false, 1, 0)
	})
	t.Run("Concurrent", func(t *testing.T) {
		key := keyer(t)("k")
		b := newLimiter(t, ratelimit.TokenBucketConfig{Rate: slow, Burst: 20})
		if got := Concurrently(t, 100, func(int) (ratelimit.Result, error) { return b.Allow(ctx, key) }); got != 20 {
			t.Fatalf("admitted %d of 100 concurrent requests, want 20", got)
		}
	})
	t.Run("ContextDone", func(t *testing.T) {
		b := newLimiter(t, ratelimit.TokenBucketConfig{Rate: slow, Burst: 1})
		r, err := b.Allow(cancelled(), keyer(t)("k"))
		if err == nil || r.Allowed {
			t.Fatalf("cancelled context: got %+v, %v; want an error", r, err)
		}
	})
}
