package ratelimit_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// TestOnARing runs the limiters on a go-redis Ring of three servers, whose
// keys spread over shards that each need the scripts loaded: a beat's
// pipeline answered NOSCRIPT must load its script on every shard, not on
// the one go-redis picks for SCRIPT LOAD.
func TestOnARing(t *testing.T) {
	addrs := map[string]string{}
	for _, name := range []string{"a", "b", "c"} {
		addrs[name] = redistest.Start(t).Addr
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: addrs})
	t.Cleanup(func() { ring.Close() })
	ctx := context.Background()
	for i := range 6 { // each a new process's first beat, on fresh scripts (the old load hit the right shard 1 time in 3)
		if err := ring.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.ScriptFlush(ctx).Err()
		}); err != nil {
			t.Fatal(err)
		}
		c := mustConcurrency(t, ring, ratelimit.ConcurrencyConfig{})
		for u := range 10 {
			if _, r, err := c.Acquire(ctx, fmt.Sprintf("u%d-%d", i, u), 1); err != nil || !r.Allowed {
				t.Fatalf("round %d, user %d: %+v, %v", i, u, r, err)
			}
		}
	}
	w := mustSlidingWindow(t, ring, ratelimit.SlidingWindowConfig{Limit: 2, Window: time.Minute})
	if got := ratelimittest.Concurrently(t, 30, func(i int) (ratelimit.Result, error) {
		return w.Allow(ctx, fmt.Sprintf("ip%d", i%10))
	}); got != 20 {
		t.Fatalf("window on a ring: %d admitted of 30 (10 keys, limit 2), want 20", got)
	}
}
