package cache_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldgw/herald/cache"
	"github.com/heraldgw/herald/internal/redistest"
)

// TestOnACluster: on a Redis Cluster a cache keeps all its keys in one
// slot (its namespace is hash-tagged), so every script, tag and pattern
// invalidation works as on a single server; a namespace without a hash
// tag is refused.
func TestOnACluster(t *testing.T) {
	rdb := redistest.StartCluster(t, 3, 0).Client()
	if _, err := cache.New(rdb, nil, cache.Config[int]{Name: "bad", Namespace: "app:bad"}); err == nil || !strings.Contains(err.Error(), "hash tag") {
		t.Errorf("namespace without a hash tag: %v, want refused", err)
	}
	c, _ := newCache(t, rdb, cache.Config[int]{Name: "clustered"})
	if got := c.RedisKey("user:1"); got != "herald:cache:{clustered}:v:user:1" {
		t.Errorf("RedisKey = %q, want the name as a hash tag", got)
	}
	ctx := ctxT(t)

	var loads atomic.Int64
	load := func(v int) func(context.Context) (int, error) {
		return func(context.Context) (int, error) { loads.Add(1); return v, nil }
	}
	// Cache-aside across many keys (they would span every slot without the tag).
	for i := range 50 {
		for range 2 {
			v, err := c.GetOrLoad(ctx, fmt.Sprintf("user:%d", i), time.Minute, load(i), cache.Tags("users", fmt.Sprintf("shard:%d", i%3)))
			if err != nil || v != i {
				t.Fatalf("GetOrLoad user:%d: %d, %v", i, v, err)
			}
		}
	}
	if loads.Load() != 50 {
		t.Errorf("%d loads for 50 keys read twice, want 50", loads.Load())
	}
	if n, err := c.Delete(ctx, "user:1", "user:2", "user:3"); err != nil || n != 3 {
		t.Errorf("Delete of three keys: %d, %v", n, err)
	}
	if n, err := c.InvalidateTags(ctx, "shard:0"); err != nil || n != 16 { // 0,3,…,48 less user:3
		t.Errorf("InvalidateTags(shard:0): %d, %v; want 16", n, err)
	}
	if n, err := c.InvalidatePattern(ctx, "user:1?"); err != nil || n != 7 { // 10..19 less 12, 15, 18 (shard:0)
		t.Errorf("InvalidatePattern(user:1?): %d, %v; want 7", n, err)
	}
	if n, err := c.InvalidateTags(ctx, "users"); err != nil || n != 50-3-16-7 {
		t.Errorf("InvalidateTags(users): %d, %v; want %d", n, err, 50-3-16-7)
	}
	// Stale-while-revalidate refreshes through the same scripts.
	if err := c.Set(ctx, "swr", 1, 10*time.Millisecond, cache.Stale(time.Minute)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the entry to go stale and be refreshed", func() bool {
		v, err := c.GetOrLoad(ctx, "swr", time.Minute, load(2), cache.Stale(time.Minute))
		return err == nil && v == 2
	})
}
