package cache_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/cache"
	"github.com/heraldgw/herald/internal/redistest"
)

// Writers keep loading tagged entries while the tag is invalidated. No
// entry loaded before the invalidation survives it, and every entry
// written after it is recorded under the tag, so a second invalidation
// leaves no tagged entry at all.
func TestInvalidateTagsUnderConcurrentWrites(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	c, _ := newCache(t, rdb, cache.Config[int]{Name: "tags"})
	// other shares the Redis but not the tag: it must keep its entries.
	other, _ := newCache(t, rdb, cache.Config[int]{Name: "tags-other"})
	if err := other.Set(ctxT(t), "keep", 1, time.Minute, cache.Tags("t")); err != nil {
		t.Fatal(err)
	}

	// phase is 0 until just before the invalidation starts: a load that
	// read 0 began (and claimed its lock) before the invalidation.
	var phase, writes atomic.Int64
	load := func(context.Context) (int, error) { return int(phase.Load()), nil }
	ctx, stop := context.WithCancel(ctxT(t))
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("w%d:%d", w, i)
				if _, err := c.GetOrLoad(ctx, key, time.Minute, load, cache.Tags("t", fmt.Sprintf("w%d", w))); err != nil && ctx.Err() == nil {
					t.Errorf("GetOrLoad %s: %v", key, err)
					return
				}
				writes.Add(1)
			}
		})
	}
	// One load straddles the invalidation for certain.
	g := newGate()
	straddled := make(chan int, 1)
	go func() {
		v, err := c.GetOrLoad(ctxT(t), "straddle", time.Minute, func(ctx context.Context) (int, error) {
			return 0, g.wait(ctx)
		}, cache.Tags("t"))
		if err != nil {
			t.Errorf("straddling load: %v", err)
		}
		straddled <- v
	}()
	g.waitStarted(t)

	waitFor(t, "writes before", func() bool { return writes.Load() >= 300 })
	phase.Store(1)
	removed, err := c.InvalidateTags(ctxT(t), "t")
	if err != nil {
		t.Fatal(err)
	}
	close(g.open)
	if v := <-straddled; v != 0 {
		t.Errorf("straddling load's caller got %d, want its value 0", v)
	}
	after := writes.Load()
	waitFor(t, "writes after", func() bool { return writes.Load() >= after+300 })
	stop()
	wg.Wait()

	entries := scanAll(t, rdb, c.RedisKey("*"))
	if slices.Contains(entries, c.RedisKey("straddle")) {
		t.Error("the straddling load stored its entry after the invalidation")
	}
	for _, k := range entries {
		v, err := rdb.Get(ctxT(t), k).Int()
		if err != nil {
			t.Fatalf("GET %s: %v", k, err)
		}
		if v == 0 {
			t.Errorf("%s was loaded before the invalidation and survived it", k)
		}
		if ok := rdb.SIsMember(ctxT(t), "herald:cache:tags:t:t", k).Val(); !ok {
			t.Errorf("%s is not recorded under its tag", k)
		}
	}
	again, err := c.InvalidateTags(ctxT(t), "t")
	if err != nil {
		t.Fatal(err)
	}
	if left := scanAll(t, rdb, c.RedisKey("*")); len(left) != 0 {
		t.Errorf("after a second invalidation with no writers: %d tagged entries left", len(left))
	}
	if _, err := other.Get(ctxT(t), "keep"); err != nil {
		t.Errorf("another cache's entry under the same tag name: %v, want kept", err)
	}
	t.Logf("%d writes; the invalidation removed %d entries, %d were written after it", writes.Load(), removed, again)
}

func scanAll(t testing.TB, rdb *redis.Client, match string) []string {
	t.Helper()
	var all []string
	seen := map[string]bool{} // SCAN may return a key twice, when the keyspace is rehashed
	iter := rdb.Scan(ctxT(t), 0, match, 1000).Iterator()
	for iter.Next(ctxT(t)) {
		if k := iter.Val(); !seen[k] {
			seen[k] = true
			all = append(all, k)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("SCAN %s: %v", match, err)
	}
	return all
}

// Invalidating 200,000 entries by pattern, while another client PINGs
// every millisecond, removes them all. The PING latencies are reported,
// not asserted: the test only checks that the entries are gone. It takes
// about 2 s, 6 s under the race detector, on 2 cores.
func TestInvalidatePatternLarge(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	c, _ := newCache(t, rdb, cache.Config[string]{Name: "big"})
	const largeKeys, others = 200_000, 1000
	start := time.Now()
	fill(t, rdb, c, "user:%d", largeKeys)
	fill(t, rdb, c, "order:%d", others)
	t.Logf("filled %d keys in %v", largeKeys+others, time.Since(start).Round(time.Millisecond))

	idle := pings(t, srv.Addr, func() { time.Sleep(500 * time.Millisecond) })
	// Every command into the slow log, to see how long Redis itself was
	// busy with each batch (the server is this test's own).
	for _, args := range [][]any{
		{"CONFIG", "SET", "slowlog-log-slower-than", "0"},
		{"CONFIG", "SET", "slowlog-max-len", "100000"},
		{"SLOWLOG", "RESET"},
	} {
		if err := rdb.Do(ctxT(t), args...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var removed int
	var took time.Duration
	busy := pings(t, srv.Addr, func() {
		start := time.Now()
		var err error
		removed, err = c.InvalidatePattern(ctxT(t), "user:*")
		took = time.Since(start)
		if err != nil {
			t.Errorf("InvalidatePattern: %v", err)
		}
	})
	if removed != largeKeys {
		t.Errorf("removed: got %d, want %d", removed, largeKeys)
	}
	if left := scanAll(t, rdb, c.RedisKey("user:*")); len(left) != 0 {
		t.Errorf("%d matching entries left", len(left))
	}
	if left := scanAll(t, rdb, c.RedisKey("order:*")); len(left) != others {
		t.Errorf("entries not matching: %d left, want %d", len(left), others)
	}
	t.Logf("InvalidatePattern removed %d of %d keys in %v (race detector: %v)", removed, largeKeys+others, took.Round(time.Millisecond), raceEnabled)
	t.Logf("PING every 1 ms, idle:   %s", idle)
	t.Logf("PING every 1 ms, during: %s", busy)
	t.Logf("Redis time per command during it: %s", serverTimes(t, rdb))
}

// serverTimes summarises the slow log by command: how many, and the
// longest execution time.
func serverTimes(t *testing.T, rdb *redis.Client) string {
	t.Helper()
	logs, err := rdb.SlowLogGet(ctxT(t), -1).Result()
	if err != nil {
		t.Fatalf("SLOWLOG GET: %v", err)
	}
	type stat struct {
		n   int
		max time.Duration
	}
	by := map[string]*stat{}
	for _, l := range logs {
		if len(l.Args) == 0 {
			continue
		}
		name := strings.ToUpper(l.Args[0])
		if by[name] == nil {
			by[name] = &stat{}
		}
		by[name].n++
		by[name].max = max(by[name].max, l.Duration)
	}
	var parts []string
	for _, name := range []string{"SCAN", "UNLINK", "PING"} {
		if s := by[name]; s != nil {
			parts = append(parts, fmt.Sprintf("%s n=%d max=%v", name, s.n, s.max))
		}
	}
	return strings.Join(parts, ", ")
}

// fill writes n entries named by format (with %d) through pipelines.
func fill(t *testing.T, rdb *redis.Client, c *cache.Cache[string], format string, n int) {
	t.Helper()
	const batch = 5000
	for from := 0; from < n; from += batch {
		_, err := rdb.Pipelined(ctxT(t), func(p redis.Pipeliner) error {
			for i := from; i < min(from+batch, n); i++ {
				p.Set(ctxT(t), c.RedisKey(fmt.Sprintf(format, i)), `"x"`, time.Hour)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("fill: %v", err)
		}
	}
}

// latencies summarises PING round trips.
type latencies []time.Duration

func (l latencies) String() string {
	if len(l) == 0 {
		return "no pings"
	}
	s := slices.Clone(l)
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[min(int(p*float64(len(s))), len(s)-1)] }
	return fmt.Sprintf("n=%d p50=%v p99=%v max=%v", len(s), q(0.50), q(0.99), s[len(s)-1])
}

// pings PINGs Redis at addr on a connection of its own every millisecond
// while work runs, and returns the round-trip times.
func pings(t *testing.T, addr string, work func()) latencies {
	t.Helper()
	p := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1})
	defer p.Close()
	if err := p.Ping(ctxT(t)).Err(); err != nil { // connect first
		t.Fatal(err)
	}
	done := make(chan struct{})
	var got latencies
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			start := time.Now()
			if err := p.Ping(ctxT(t)).Err(); err != nil {
				t.Errorf("PING: %v", err)
				return
			}
			got = append(got, time.Since(start))
		}
	})
	work()
	close(done)
	wg.Wait()
	return got
}

// A GetOrLoad that starts after Delete returned never joins a load that
// read the source before the Delete: it loads the new value itself.
func TestGetOrLoadAfterDeleteDoesNotJoinAnOlderLoad(t *testing.T) {
	rdb := redistest.Start(t).Client()
	c, _ := newCache(t, rdb, cache.Config[string]{Name: "flight"})
	ctx := ctxT(t)
	var source atomic.Value
	source.Store("v1")
	read, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	load := func(context.Context) (string, error) {
		v := source.Load().(string)
		if first.CompareAndSwap(false, true) {
			close(read)
			<-release // the first load holds its old value until released
		}
		return v, nil
	}
	done := make(chan struct{})
	go func() { defer close(done); c.GetOrLoad(ctx, "k", time.Minute, load) }()
	<-read
	source.Store("v2") // the writer updates the source, then invalidates
	if _, err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	v, err := c.GetOrLoad(ctx, "k", time.Minute, load)
	close(release)
	<-done
	if err != nil || v != "v2" {
		t.Fatalf("GetOrLoad after Delete = %q, %v; want v2", v, err)
	}
}
