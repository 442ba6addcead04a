package cache_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/cache"
	"github.com/heraldgw/herald/internal/redistest"
)

type profile struct {
	Name  string   `json:"name"`
	Roles []string `json:"roles"`
}

func TestGetOrLoadMissThenHit(t *testing.T) {
	rdb := redistest.Start(t).Client()
	c, reg := newCache(t, rdb, cache.Config[profile]{Name: "profiles"})
	var loads atomic.Int32
	load := func(context.Context) (profile, error) {
		loads.Add(1)
		return profile{Name: "Ada", Roles: []string{"admin"}}, nil
	}
	for i := range 3 {
		got, err := c.GetOrLoad(ctxT(t), "user:42", time.Minute, load)
		if err != nil || got.Name != "Ada" || len(got.Roles) != 1 {
			t.Fatalf("call %d: got %+v, %v", i, got, err)
		}
	}
	if n := loads.Load(); n != 1 {
		t.Errorf("loads: got %d, want 1", n)
	}
	// Stored as plain JSON under the documented key, with the TTL.
	raw, err := rdb.Get(ctxT(t), "herald:cache:profiles:v:user:42").Result()
	if err != nil || raw != `{"name":"Ada","roles":["admin"]}` {
		t.Errorf("entry: got %q, %v", raw, err)
	}
	if c.RedisKey("user:42") != "herald:cache:profiles:v:user:42" {
		t.Errorf("RedisKey: got %q", c.RedisKey("user:42"))
	}
	if ttl := rdb.PTTL(ctxT(t), c.RedisKey("user:42")).Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("entry ttl: got %v, want within (0, 1m]", ttl)
	}
	if n := rdb.Exists(ctxT(t), "herald:cache:profiles:l:user:42").Val(); n != 0 {
		t.Errorf("lock left behind after the load")
	}
	for _, m := range []struct {
		metric string
		want   float64
	}{
		{"herald_cache_misses_total", 1},
		{"herald_cache_hits_total", 2},
		{"herald_cache_loads_total", 1},
		{"herald_cache_stale_total", 0},
	} {
		if got := counter(t, reg, m.metric, "profiles", ""); got != m.want {
			t.Errorf("%s: got %v, want %v", m.metric, got, m.want)
		}
	}
}

// An entry whose value is empty is a hit: the load is not called again.
func TestEmptyValueIsAHit(t *testing.T) {
	rdb := redistest.Start(t).Client()
	for _, tc := range []struct {
		name string
		run  func(t *testing.T) (loads int)
	}{
		{"raw empty string", func(t *testing.T) int {
			c, _ := newCache(t, rdb, cache.Config[string]{Name: "raw", Codec: rawCodec{}})
			return countLoads(t, c, "")
		}},
		{"json empty string", func(t *testing.T) int {
			c, _ := newCache(t, rdb, cache.Config[string]{Name: "jsonstr"})
			return countLoads(t, c, "")
		}},
		{"json empty list", func(t *testing.T) int {
			c, _ := newCache(t, rdb, cache.Config[[]int]{Name: "jsonlist"})
			return countLoads(t, c, []int{})
		}},
		{"json nil list", func(t *testing.T) int {
			c, _ := newCache(t, rdb, cache.Config[[]int]{Name: "jsonnil"})
			return countLoads(t, c, nil)
		}},
		{"zero struct", func(t *testing.T) int {
			c, _ := newCache(t, rdb, cache.Config[profile]{Name: "zero"})
			return countLoads(t, c, profile{})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if n := tc.run(t); n != 1 {
				t.Errorf("loads: got %d, want 1", n)
			}
		})
	}
}

func countLoads[V any](t *testing.T, c *cache.Cache[V], v V) int {
	t.Helper()
	loads := 0
	for range 3 {
		if _, err := c.GetOrLoad(ctxT(t), "k", time.Minute, func(context.Context) (V, error) { loads++; return v, nil }); err != nil {
			t.Fatalf("GetOrLoad: %v", err)
		}
	}
	return loads
}

// A load error is returned to every caller sharing the load, wrapped, and
// nothing is cached: the next call loads again.
func TestLoadErrorIsReturnedNotCached(t *testing.T) {
	rdb := redistest.Start(t).Client()
	c, reg := newCache(t, rdb, cache.Config[string]{Name: "errs"})
	errDB := errors.New("database down")
	g := newGate()
	var loads atomic.Int32
	failing := func(ctx context.Context) (string, error) {
		loads.Add(1)
		if err := g.wait(ctx); err != nil {
			return "", err
		}
		return "", errDB
	}
	const callers = 20
	errs := make(chan error, callers)
	for range callers {
		go func() {
			_, err := c.GetOrLoad(ctxT(t), "k", time.Minute, failing)
			errs <- err
		}()
	}
	g.waitStarted(t)
	close(g.open)
	for range callers {
		if err := <-errs; !errors.Is(err, errDB) {
			t.Errorf("got %v, want the load's error", err)
		}
	}
	if n := rdb.Exists(ctxT(t), c.RedisKey("k"), "herald:cache:errs:l:k").Val(); n != 0 {
		t.Errorf("after a failed load: %d of entry and lock exist, want none", n)
	}
	got, err := c.GetOrLoad(ctxT(t), "k", time.Minute, func(context.Context) (string, error) { return "ok", nil })
	if err != nil || got != "ok" {
		t.Errorf("after the error: got %q, %v, want a new load", got, err)
	}
	// Callers that arrived after the first load failed started another.
	if e, n := counter(t, reg, "herald_cache_errors_total", "errs", "load"), loads.Load(); e != float64(n) || n < 1 || n > callers {
		t.Errorf("load errors: got %v for %d failing loads", e, n)
	}
}

// Concurrent misses in one process share one load.
func TestConcurrentMissesShareOneLoad(t *testing.T) {
	rdb := redistest.Start(t).Client()
	c, _ := newCache(t, rdb, cache.Config[int]{Name: "sf"})
	g := newGate()
	var loads atomic.Int32
	load := func(ctx context.Context) (int, error) {
		loads.Add(1)
		return 7, g.wait(ctx)
	}
	const callers = 200
	var wg sync.WaitGroup
	var entered atomic.Int32
	for range callers {
		wg.Go(func() {
			entered.Add(1)
			if v, err := c.GetOrLoad(ctxT(t), "hot", time.Minute, load); err != nil || v != 7 {
				t.Errorf("got %d, %v", v, err)
			}
		})
	}
	g.waitStarted(t)
	waitFor(t, "all callers entered", func() bool { return entered.Load() == callers })
	close(g.open)
	wg.Wait()
	if n := loads.Load(); n != 1 {
		t.Errorf("loads: got %d, want 1", n)
	}
}

// A caller that gives up gets its context's error; the load goes on and
// fills the cache.
func TestCallerCancelDoesNotCancelLoad(t *testing.T) {
	rdb := redistest.Start(t).Client()
	c, _ := newCache(t, rdb, cache.Config[string]{Name: "cancel"})
	g := newGate()
	ctx, cancel := context.WithCancel(ctxT(t))
	errc := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoad(ctx, "k", time.Minute, func(ctx context.Context) (string, error) { return "late", g.wait(ctx) })
		errc <- err
	}()
	g.waitStarted(t)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	close(g.open)
	waitFor(t, "value stored", func() bool { return rdb.Get(ctxT(t), c.RedisKey("k")).Val() == `"late"` })
}

func TestLoadPanicIsAnError(t *testing.T) {
	rdb := redistest.Start(t).Client()
	c, _ := newCache(t, rdb, cache.Config[string]{Name: "panic"})
	_, err := c.GetOrLoad(ctxT(t), "k", time.Minute, func(context.Context) (string, error) { panic("boom") })
	if !errors.Is(err, cache.ErrLoadPanicked) || !strings.Contains(err.Error(), "boom") {
		t.Errorf("got %v, want ErrLoadPanicked with the panic value", err)
	}
}

// A stale read returns the stale value at once and starts one refresh;
// reads during the refresh do not start another; once it stored, reads
// are fresh hits.
func TestStaleWhileRevalidate(t *testing.T) {
	rdb := redistest.Start(t).Client()
	c, reg := newCache(t, rdb, cache.Config[string]{Name: "swr"})
	ttl, window := time.Minute, 10*time.Minute
	if err := c.Set(ctxT(t), "k", "old", ttl, cache.Stale(window)); err != nil {
		t.Fatal(err)
	}
	if got := rdb.PTTL(ctxT(t), c.RedisKey("k")).Val(); got <= window {
		t.Fatalf("entry ttl %v: want fresh TTL + stale window", got)
	}
	makeStale(t, rdb, c.RedisKey("k"), window)

	g := newGate()
	var loads atomic.Int32
	load := func(ctx context.Context) (string, error) {
		loads.Add(1)
		return "new", g.wait(ctx)
	}
	for i := range 50 {
		got, err := c.GetOrLoad(ctxT(t), "k", ttl, load, cache.Stale(window))
		if err != nil || got != "old" {
			t.Fatalf("read %d during the refresh: got %q, %v, want the stale value", i, got, err)
		}
	}
	g.waitStarted(t)
	close(g.open)
	waitFor(t, "refreshed", func() bool { return rdb.Get(ctxT(t), c.RedisKey("k")).Val() == `"new"` })
	if got, err := c.GetOrLoad(ctxT(t), "k", ttl, load, cache.Stale(window)); err != nil || got != "new" {
		t.Errorf("after the refresh: got %q, %v", got, err)
	}
	if n := loads.Load(); n != 1 {
		t.Errorf("refresh loads: got %d, want 1", n)
	}
	if got := rdb.PTTL(ctxT(t), c.RedisKey("k")).Val(); got <= window {
		t.Errorf("entry ttl after refresh %v: want fresh again", got)
	}
	if got := counter(t, reg, "herald_cache_stale_total", "swr", ""); got != 50 {
		t.Errorf("stale reads: got %v, want 50", got)
	}
	if got := counter(t, reg, "herald_cache_refreshes_total", "swr", ""); got != 1 {
		t.Errorf("refreshes: got %v, want 1", got)
	}
}

// makeStale shortens an entry's remaining life to within its stale
// window, as the passing of its fresh TTL would.
func makeStale(t *testing.T, rdb *redis.Client, key string, window time.Duration) {
	t.Helper()
	if ok, err := rdb.PExpire(ctxT(t), key, window-time.Second).Result(); err != nil || !ok {
		t.Fatalf("PEXPIRE %s: %v, %v", key, ok, err)
	}
}

// A failed refresh is logged and counted, the stale value stays, and no
// refresh is tried again within the backoff.
func TestRefreshErrorKeepsStaleValue(t *testing.T) {
	rdb := redistest.Start(t).Client()
	var logs logBuffer
	c, reg := newCache(t, rdb, cache.Config[string]{Name: "swrerr", Logger: logs.logger(), RefreshBackoff: time.Hour})
	window := 10 * time.Minute
	if err := c.Set(ctxT(t), "k", "old", time.Minute, cache.Stale(window)); err != nil {
		t.Fatal(err)
	}
	makeStale(t, rdb, c.RedisKey("k"), window)
	var loads atomic.Int32
	failing := func(context.Context) (string, error) { loads.Add(1); return "", errors.New("source down") }
	read := func() {
		t.Helper()
		if got, err := c.GetOrLoad(ctxT(t), "k", time.Minute, failing, cache.Stale(window)); err != nil || got != "old" {
			t.Fatalf("got %q, %v, want the stale value", got, err)
		}
	}
	read()
	// The error is counted, then logged, on the refresh's goroutine: wait
	// for both.
	waitFor(t, "refresh error counted and logged", func() bool {
		return counter(t, reg, "herald_cache_errors_total", "swrerr", "refresh") == 1 &&
			strings.Contains(logs.String(), "refresh failed")
	})
	if !strings.Contains(logs.String(), "source down") {
		t.Errorf("log: got %q, want the refresh error", logs.String())
	}
	for range 20 {
		read()
	}
	if n := loads.Load(); n != 1 {
		t.Errorf("loads within the backoff: got %d, want 1", n)
	}
	if strings.Contains(logs.String(), `key=k `) {
		t.Errorf("log shows the key by default: %q", logs.String())
	}
}

// Every kind of invalidation revokes a load in flight: its value is
// returned to its callers, not stored.
func TestInvalidationRevokesLoadInFlight(t *testing.T) {
	rdb := redistest.Start(t).Client()
	for _, tc := range []struct {
		name       string
		invalidate func(ctx context.Context, c *cache.Cache[string]) error
		want       string // the entry afterwards; "" for none
	}{
		{"delete", func(ctx context.Context, c *cache.Cache[string]) error {
			_, err := c.Delete(ctx, "user:1")
			return err
		}, ""},
		{"tag", func(ctx context.Context, c *cache.Cache[string]) error {
			_, err := c.InvalidateTags(ctx, "users")
			return err
		}, ""},
		{"pattern", func(ctx context.Context, c *cache.Cache[string]) error {
			_, err := c.InvalidatePattern(ctx, "user:*")
			return err
		}, ""},
		{"set", func(ctx context.Context, c *cache.Cache[string]) error {
			return c.Set(ctx, "user:1", "written", time.Minute)
		}, `"written"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := newCache(t, rdb, cache.Config[string]{Name: "revoke-" + tc.name})
			g := newGate()
			type result struct {
				v   string
				err error
			}
			res := make(chan result, 1)
			go func() {
				v, err := c.GetOrLoad(ctxT(t), "user:1", time.Minute, func(ctx context.Context) (string, error) {
					return "loaded before", g.wait(ctx)
				}, cache.Tags("users"))
				res <- result{v, err}
			}()
			g.waitStarted(t)
			if err := tc.invalidate(ctxT(t), c); err != nil {
				t.Fatal(err)
			}
			close(g.open)
			if r := <-res; r.err != nil || r.v != "loaded before" {
				t.Errorf("caller: got %q, %v", r.v, r.err)
			}
			got, err := rdb.Get(ctxT(t), c.RedisKey("user:1")).Result()
			if errors.Is(err, redis.Nil) {
				got = ""
			}
			if got != tc.want {
				t.Errorf("entry after the load: got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDeleteAndGet(t *testing.T) {
	rdb := redistest.Start(t).Client()
	c, _ := newCache(t, rdb, cache.Config[int]{Name: "del"})
	for i := range 3 {
		if err := c.Set(ctxT(t), fmt.Sprint(i), i, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := c.Get(ctxT(t), "1"); err != nil || v != 1 {
		t.Errorf("Get: got %d, %v", v, err)
	}
	n, err := c.Delete(ctxT(t), "0", "1", "missing")
	if err != nil || n != 2 {
		t.Errorf("Delete: got %d, %v, want 2", n, err)
	}
	if _, err := c.Get(ctxT(t), "1"); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("Get after Delete: got %v, want ErrNotFound", err)
	}
	if v, err := c.Get(ctxT(t), "2"); err != nil || v != 2 {
		t.Errorf("untouched key: got %d, %v", v, err)
	}
}

// An entry that does not decode is dropped and loaded again.
func TestUndecodableEntryIsReloaded(t *testing.T) {
	rdb := redistest.Start(t).Client()
	c, reg := newCache(t, rdb, cache.Config[int]{Name: "corrupt"})
	if err := rdb.Set(ctxT(t), c.RedisKey("k"), "not json", 0).Err(); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetOrLoad(ctxT(t), "k", time.Minute, func(context.Context) (int, error) { return 5, nil })
	if err != nil || got != 5 {
		t.Errorf("got %d, %v, want a fresh load", got, err)
	}
	if raw := rdb.Get(ctxT(t), c.RedisKey("k")).Val(); raw != "5" {
		t.Errorf("entry: got %q, want the reloaded value", raw)
	}
	if e := counter(t, reg, "herald_cache_errors_total", "corrupt", "codec"); e != 1 {
		t.Errorf("codec errors: got %v, want 1", e)
	}
}

func TestInvalidatePattern(t *testing.T) {
	rdb := redistest.Start(t).Client()
	// A namespace with glob characters must be matched literally.
	c, _ := newCache(t, rdb, cache.Config[int]{Name: "pat", Namespace: "app[1]*", ScanCount: 7})
	other, _ := newCache(t, rdb, cache.Config[int]{Name: "pat2", Namespace: "app[1]x"})
	for i := range 50 {
		for _, k := range []string{fmt.Sprintf("user:%d", i), fmt.Sprintf("order:%d", i)} {
			if err := c.Set(ctxT(t), k, i, time.Minute); err != nil {
				t.Fatal(err)
			}
		}
		if err := other.Set(ctxT(t), fmt.Sprintf("user:%d", i), i, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		pattern string
		removed int
	}{
		{"user:1?", 10},
		{"user:*", 40},
		{"user:*", 0},
		{"nothing*", 0},
	} {
		n, err := c.InvalidatePattern(ctxT(t), tc.pattern)
		if err != nil || n != tc.removed {
			t.Errorf("InvalidatePattern(%q): got %d, %v, want %d", tc.pattern, n, err, tc.removed)
		}
	}
	if _, err := c.Get(ctxT(t), "order:3"); err != nil {
		t.Errorf("order:3: %v, want kept", err)
	}
	if _, err := other.Get(ctxT(t), "user:3"); err != nil {
		t.Errorf("other cache's user:3: %v, want kept", err)
	}
}

func TestNewValidatesAndSharesMetrics(t *testing.T) {
	rdb := redistest.Start(t).Client()
	for _, name := range []string{"", "has space", "a:b", strings.Repeat("x", 65)} {
		if _, err := cache.New(rdb, nil, cache.Config[int]{Name: name}); err == nil {
			t.Errorf("name %q: got nil error", name)
		}
	}
	reg := prometheus.NewRegistry()
	a, err := cache.New(rdb, reg, cache.Config[int]{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := cache.New(rdb, reg, cache.Config[string]{Name: "b"})
	if err != nil {
		t.Fatalf("second cache on one registry: %v", err)
	}
	defer b.Close()
	a.Get(ctxT(t), "x")
	b.Get(ctxT(t), "x")
	if counter(t, reg, "herald_cache_misses_total", "a", "") != 1 || counter(t, reg, "herald_cache_misses_total", "b", "") != 1 {
		t.Errorf("each cache should count under its own label")
	}
	// A registry holding something else under a cache metric's name.
	bad := prometheus.NewRegistry()
	bad.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "herald_cache_hits_total", Help: "x"}))
	if _, err := cache.New(rdb, bad, cache.Config[int]{Name: "c"}); err == nil {
		t.Error("conflicting registry: got nil error")
	}
}

func TestClose(t *testing.T) {
	rdb := redistest.Start(t).Client()
	c, err := cache.New(rdb, nil, cache.Config[string]{Name: "close"})
	if err != nil {
		t.Fatal(err)
	}
	window := 10 * time.Minute
	if err := c.Set(ctxT(t), "k", "old", time.Minute, cache.Stale(window)); err != nil {
		t.Fatal(err)
	}
	makeStale(t, rdb, c.RedisKey("k"), window)
	g := newGate()
	if got, err := c.GetOrLoad(ctxT(t), "k", time.Minute, func(ctx context.Context) (string, error) {
		return "new", g.wait(ctx) // returns when Close cancels it
	}, cache.Stale(window)); err != nil || got != "old" {
		t.Fatalf("got %q, %v", got, err)
	}
	g.waitStarted(t)
	c.Close() // cancels the blocked refresh and waits for it
	if raw := rdb.Get(ctxT(t), c.RedisKey("k")).Val(); raw != `"old"` {
		t.Errorf("entry after a cancelled refresh: got %q", raw)
	}
	if _, err := c.GetOrLoad(ctxT(t), "k", time.Minute, func(context.Context) (string, error) { return "", nil }); !errors.Is(err, cache.ErrClosed) {
		t.Errorf("GetOrLoad after Close: got %v, want ErrClosed", err)
	}
}

// Without Redis, GetOrLoad still answers from the source, uncached, and
// counts the failures.
func TestRedisDownFallsBackToLoad(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialerRetries: 1, DialTimeout: 200 * time.Millisecond})
	defer rdb.Close()
	var logs logBuffer
	c, reg := newCache(t, rdb, cache.Config[string]{Name: "down", Logger: logs.logger()})
	srv.Kill()
	var loads atomic.Int32
	start := time.Now()
	for range 10 {
		got, err := c.GetOrLoad(ctxT(t), "k", time.Minute, func(context.Context) (string, error) { loads.Add(1); return "db", nil })
		if err != nil || got != "db" {
			t.Fatalf("got %q, %v, want the source's value", got, err)
		}
	}
	elapsed := time.Since(start)
	if n := loads.Load(); n != 10 {
		t.Errorf("loads: got %d, want 10 (nothing can be cached)", n)
	}
	if e := counter(t, reg, "herald_cache_errors_total", "down", "redis"); e < 10 {
		t.Errorf("redis errors: got %v, want at least 10", e)
	}
	// Logged at most once a second.
	if n, most := strings.Count(logs.String(), "redis failed"), int(elapsed/time.Second)+1; n < 1 || n > most {
		t.Errorf("redis failures logged %d times in %v, want 1..%d", n, elapsed, most)
	}
}
