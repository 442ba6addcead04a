package ratelimit_test

import (
	"testing"

	"github.com/heraldgw/herald/internal/redistest"
	"github.com/heraldgw/herald/ratelimit"
	"github.com/heraldgw/herald/ratelimit/ratelimittest"
)

// TestOnACluster runs the limiters' suites on a Redis Cluster: each
// decision is one script on one key; the slots' heartbeat, lease index and
// user sets are separate keys, each touched alone.
func TestOnACluster(t *testing.T) {
	rdb := redistest.StartCluster(t, 3, 0).Client()
	t.Run("SlidingWindow", func(t *testing.T) {
		ratelimittest.RunSlidingWindow(t, func(t *testing.T, cfg ratelimit.SlidingWindowConfig) ratelimit.Limiter {
			return mustSlidingWindow(t, rdb, cfg)
		})
	})
	t.Run("TokenBucket", func(t *testing.T) {
		ratelimittest.RunTokenBucket(t, func(t *testing.T, cfg ratelimit.TokenBucketConfig) ratelimittest.Bucket {
			return mustTokenBucket(t, rdb, cfg)
		})
	})
	t.Run("Concurrency", func(t *testing.T) {
		ratelimittest.RunConcurrency(t, func(t *testing.T) ratelimittest.Slots {
			return mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{})
		})
	})
}
