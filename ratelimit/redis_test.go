package ratelimit_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/redistest"
	"github.com/heraldgw/herald/ratelimit"
	"github.com/heraldgw/herald/ratelimit/ratelimittest"
)

var (
	_ ratelimittest.Bucket = (*ratelimit.TokenBucket)(nil)
	_ ratelimittest.Slots  = (*ratelimit.Concurrency)(nil)
)

// replicas returns n go-redis clients of srv, each with its own pool, as n
// gateway replicas would have.
func replicas(t *testing.T, srv *redistest.Server, n int) []*redis.Client {
	t.Helper()
	cs := make([]*redis.Client, n)
	for i := range cs {
		cs[i] = srv.Client()
	}
	return cs
}

func TestRedisSlidingWindow(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ratelimittest.RunSlidingWindow(t, func(t *testing.T, cfg ratelimit.SlidingWindowConfig) ratelimit.Limiter {
		return mustSlidingWindow(t, rdb, cfg)
	})
}

func TestRedisTokenBucket(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ratelimittest.RunTokenBucket(t, func(t *testing.T, cfg ratelimit.TokenBucketConfig) ratelimittest.Bucket {
		return mustTokenBucket(t, rdb, cfg)
	})
}

func TestRedisConcurrency(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ratelimittest.RunConcurrency(t, func(t *testing.T) ratelimittest.Slots {
		return mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{})
	})
}

func mustSlidingWindow(t testing.TB, rdb redis.Scripter, cfg ratelimit.SlidingWindowConfig) *ratelimit.SlidingWindow {
	t.Helper()
	l, err := ratelimit.NewSlidingWindow(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustTokenBucket(t testing.TB, rdb redis.Scripter, cfg ratelimit.TokenBucketConfig) *ratelimit.TokenBucket {
	t.Helper()
	b, err := ratelimit.NewTokenBucket(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustConcurrency(t testing.TB, rdb redis.Cmdable, cfg ratelimit.ConcurrencyConfig) *ratelimit.Concurrency {
	t.Helper()
	c, err := ratelimit.NewConcurrency(rdb, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// redisNow is the Redis server's clock, in ms: the only clock the Redis
// limiters read.
func redisNow(t *testing.T, rdb *redis.Client) int64 {
	t.Helper()
	now, err := rdb.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return now.UnixMilli()
}

// TestSlidingWindowClassicKey checks the key shape of PROTOCOL §1: a sorted
// set ratelimit:{id} scored by Redis's clock in ms, with one unique member
// per admitted request and nothing for refused ones; and that entries a
// classic app writes itself count too.
func TestSlidingWindowClassicKey(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	l := mustSlidingWindow(t, rdb, ratelimit.SlidingWindowConfig{Limit: 5, Window: time.Minute})
	if got := l.Key("1.2.3.4"); got != "ratelimit:1.2.3.4" {
		t.Fatalf("Key: got %q, want ratelimit:1.2.3.4", got)
	}
	// A classic app admitted one request a second ago.
	before := redisNow(t, rdb)
	rdb.ZAdd(ctx, "ratelimit:app", redis.Z{Score: float64(before - 1000), Member: strconv.FormatInt(before-1000, 10)})
	admitted := 0
	for range 10 {
		r, err := l.Allow(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		if r.Allowed {
			admitted++
		}
	}
	after := redisNow(t, rdb)
	if admitted != 4 {
		t.Errorf("admitted %d beside the classic app's 1, want 4", admitted)
	}
	zs, err := rdb.ZRangeWithScores(ctx, "ratelimit:app", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(zs) != 5 {
		t.Fatalf("ZCARD %d, want 5: refused requests must not be recorded", len(zs))
	}
	for _, z := range zs[1:] {
		if s := int64(z.Score); s < before || s > after {
			t.Errorf("score %d outside Redis TIME [%d, %d]", s, before, after)
		}
	}
	ttl := rdb.PTTL(ctx, "ratelimit:app").Val()
	if ttl <= 0 || ttl > time.Minute {
		t.Errorf("PTTL %v, want in (0, 1m]", ttl)
	}

	custom := mustSlidingWindow(t, rdb, ratelimit.SlidingWindowConfig{Limit: 1, Window: time.Minute, Prefix: "rl:"})
	if _, err := custom.Allow(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if n := rdb.ZCard(ctx, "rl:x").Val(); n != 1 {
		t.Errorf("custom prefix: ZCARD rl:x = %d, want 1", n)
	}
}

// TestTokenBucketClassicHash checks the hash of PROTOCOL §1 and that the
// refill runs on Redis's clock only: the state is seeded relative to Redis
// TIME, and a lastRefill written by a client whose clock runs an hour ahead
// neither refills nor freezes the bucket. The Redis limiters take no clock
// at all (see TestRedisLimitersReadNoLocalClock).
func TestTokenBucketClassicHash(t *testing.T) {
	srv := redistest.Start(t)
	cs := replicas(t, srv, 2)
	a, b := cs[0], cs[1]
	ctx := context.Background()
	cfg := ratelimit.TokenBucketConfig{Rate: 1, Burst: 5}
	ba, bb := mustTokenBucket(t, a, cfg), mustTokenBucket(t, b, cfg)
	if got := ba.Key("u1"); got != "bucket:u1" {
		t.Fatalf("Key: got %q, want bucket:u1", got)
	}

	// Empty a second ago by Redis's clock: exactly one token since.
	now := redisNow(t, a)
	a.HSet(ctx, "bucket:u1", "tokens", "0", "lastRefill", strconv.FormatInt(now-1000, 10))
	r, err := ba.Allow(ctx, "u1")
	if err != nil {
		t.Fatal(err)
	}
	if !r.Allowed || r.Remaining != 0 {
		t.Fatalf("after 1 s at 1 token/s: got %+v, want admitted with 0 left", r)
	}
	// The other replica sees the same state.
	if r, _ := bb.Allow(ctx, "u1"); r.Allowed {
		t.Fatalf("replica b admitted from an empty bucket: %+v", r)
	}
	h := a.HGetAll(ctx, "bucket:u1").Val()
	last, _ := strconv.ParseInt(h["lastRefill"], 10, 64)
	if after := redisNow(t, a); last < now || last > after {
		t.Errorf("lastRefill %d outside Redis TIME [%d, %d]", last, now, after)
	}
	if _, err := strconv.ParseFloat(h["tokens"], 64); err != nil {
		t.Errorf("tokens %q: %v", h["tokens"], err)
	}

	// A classic client with a fast clock wrote lastRefill an hour ahead.
	now = redisNow(t, a)
	a.HSet(ctx, "bucket:u2", "tokens", "0", "lastRefill", strconv.FormatInt(now+3_600_000, 10))
	if r, _ := ba.Allow(ctx, "u2"); r.Allowed {
		t.Fatalf("a future lastRefill refilled the bucket: %+v", r)
	}
	last, _ = strconv.ParseInt(a.HGet(ctx, "bucket:u2", "lastRefill").Val(), 10, 64)
	if last > redisNow(t, a) {
		t.Fatalf("lastRefill %d still in the future: the bucket would stay frozen for an hour", last)
	}
}

// TestSlidingWindowAccuracy runs 300 concurrent requests for one key over
// four replicas (separate clients), 20 times: exactly 100 are admitted each
// time, and exactly 100 are recorded.
func TestSlidingWindowAccuracy(t *testing.T) {
	srv := redistest.Start(t)
	clients := replicas(t, srv, 4)
	ls := make([]*ratelimit.SlidingWindow, len(clients))
	for i, c := range clients {
		ls[i] = mustSlidingWindow(t, c, ratelimit.SlidingWindowConfig{Limit: 100, Window: time.Minute})
	}
	ctx := context.Background()
	for rep := range 20 {
		key := fmt.Sprintf("acc-%d", rep)
		got := ratelimittest.Concurrently(t, 300, func(i int) (ratelimit.Result, error) { return ls[i%len(ls)].Allow(ctx, key) })
		if got != 100 {
			t.Fatalf("repetition %d: admitted %d of 300, want 100", rep, got)
		}
		if n := clients[0].ZCard(ctx, ls[0].Key(key)).Val(); n != 100 {
			t.Fatalf("repetition %d: ZCARD %d, want 100", rep, n)
		}
	}
}

// TestTokenBucketAccuracy: burst 100, refill too slow to matter, 300
// concurrent requests over four replicas, 20 times: exactly 100 admitted.
func TestTokenBucketAccuracy(t *testing.T) {
	srv := redistest.Start(t)
	clients := replicas(t, srv, 4)
	bs := make([]*ratelimit.TokenBucket, len(clients))
	for i, c := range clients {
		bs[i] = mustTokenBucket(t, c, ratelimit.TokenBucketConfig{Rate: 0.001, Burst: 100})
	}
	ctx := context.Background()
	for rep := range 20 {
		key := fmt.Sprintf("acc-%d", rep)
		got := ratelimittest.Concurrently(t, 300, func(i int) (ratelimit.Result, error) { return bs[i%len(bs)].Allow(ctx, key) })
		if got != 100 {
			t.Fatalf("repetition %d: admitted %d of 300, want 100", rep, got)
		}
	}
}

// TestConcurrencyAccuracy: cap 3, 50 concurrent acquires over two replicas,
// 20 times: exactly 3 slots taken.
func TestConcurrencyAccuracy(t *testing.T) {
	srv := redistest.Start(t)
	clients := replicas(t, srv, 2)
	cs := make([]*ratelimit.Concurrency, len(clients))
	for i, c := range clients {
		cs[i] = mustConcurrency(t, c, ratelimit.ConcurrencyConfig{Replica: fmt.Sprint("r", i)})
	}
	ctx := context.Background()
	for rep := range 20 {
		user := fmt.Sprintf("acc-%d", rep)
		got := ratelimittest.Concurrently(t, 50, func(i int) (ratelimit.Result, error) {
			_, r, err := cs[i%len(cs)].Acquire(ctx, user, 3)
			return r, err
		})
		if got != 3 {
			t.Fatalf("repetition %d: acquired %d of cap 3, want 3", rep, got)
		}
		if n := clients[0].ZCard(ctx, cs[0].Key(user)).Val(); n != 3 {
			t.Fatalf("repetition %d: ZCARD %d, want 3", rep, n)
		}
	}
}

// TestSlidingWindowKeysShareCalls: on one server, requests for many keys
// (a connect storm from many client IPs) that arrive together share
// pipelines, one script call per key in each; on a cluster each key keeps
// its own calls (a slow node holds up only its keys). Either way every
// key's decisions stay exact.
func TestSlidingWindowKeysShareCalls(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rdb   func(t *testing.T) redis.UniversalClient
		share bool
	}{
		{"server", func(t *testing.T) redis.UniversalClient { return redistest.Start(t).Client() }, true},
		{"cluster", func(t *testing.T) redis.UniversalClient { return redistest.StartCluster(t, 3, 0).Client() }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb := tc.rdb(t)
			w := mustSlidingWindow(t, rdb, ratelimit.SlidingWindowConfig{Limit: 3, Window: time.Minute})
			rec := &pipelines{}
			rdb.AddHook(rec)
			const keys, perKey = 50, 5
			var mu sync.Mutex
			admitted := map[string]int{}
			ratelimittest.Concurrently(t, keys*perKey, func(i int) (ratelimit.Result, error) {
				key := "ip" + strconv.Itoa(i%keys)
				r, err := w.Allow(context.Background(), key)
				if r.Allowed {
					mu.Lock()
					admitted[key]++
					mu.Unlock()
				}
				return r, err
			})
			for k := range keys {
				if n := admitted["ip"+strconv.Itoa(k)]; n != 3 {
					t.Errorf("ip%d: %d admitted of 5, want 3", k, n)
				}
			}
			pipes := 0
			for _, ops := range rec.ops(3, "evalsha", "eval") { // the key
				if len(ops) > 0 {
					pipes++
				}
				slices.Sort(ops)
				if len(slices.Compact(ops)) != len(ops) {
					t.Errorf("a pipeline calls the script twice for one key: %v", ops)
				}
			}
			switch {
			case tc.share && (pipes == 0 || pipes >= keys*perKey):
				t.Errorf("%d requests took %d pipelines: none shared", keys*perKey, pipes)
			case !tc.share && pipes != 0:
				t.Errorf("%d pipelines on a cluster, want a call per key", pipes)
			}
			// A server that lost its scripts (a restart, SCRIPT FLUSH) gets
			// them again.
			if err := rdb.ScriptFlush(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
			if r, err := w.Allow(context.Background(), "after-flush"); err != nil || !r.Allowed {
				t.Fatalf("after SCRIPT FLUSH: %+v, %v; want admitted", r, err)
			}
		})
	}
}

// TestSlidingWindowBadKeyAlone: a key Redis refuses (another type holds
// it) fails its own requests only, with an error that does not name it;
// the keys decided alongside it (most likely in the same pipelines) get
// their answers.
func TestSlidingWindowBadKeyAlone(t *testing.T) {
	rdb := redistest.Start(t).Client()
	w := mustSlidingWindow(t, rdb, ratelimit.SlidingWindowConfig{Limit: 3, Window: time.Minute})
	if err := rdb.Set(context.Background(), w.Key("secret-bad"), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var bad []error
	good := ratelimittest.Concurrently(t, 40, func(i int) (ratelimit.Result, error) {
		if i%4 == 0 {
			_, err := w.Allow(context.Background(), "secret-bad")
			mu.Lock()
			bad = append(bad, err)
			mu.Unlock()
			return ratelimit.Result{}, nil
		}
		return w.Allow(context.Background(), "ip"+strconv.Itoa(i%4))
	})
	if good != 9 {
		t.Errorf("%d good requests admitted, want 9 (three keys, limit 3)", good)
	}
	for _, err := range bad {
		if err == nil || strings.Contains(err.Error(), "secret") {
			t.Fatalf("the bad key's request: %v; want an error not naming the key", err)
		}
	}
}
