package cache_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/cache"
	"github.com/heraldgw/herald/internal/redistest"
)

// The cross-process tests run the test binary again as child processes
// (TestHelperProcess), each with its own cache on the parent's
// redis-server. They meet through plain Redis keys:
//
//	ready    each child INCRs it once connected
//	go       set by the parent once every child is ready
//	missed   INCRed by the stampede children for each GET of the entry
//	         that found nothing
//	loads    INCRed by every call of a load function, in any process
//	served   INCRBYed by each child once all its calls returned
//	release  set by the parent to let a blocked load return
const (
	helperEnv   = "HERALD_CACHE_HELPER" // mode: stampede or swr
	helperRedis = "HERALD_CACHE_HELPER_REDIS"
	helperN     = "HERALD_CACHE_HELPER_N"     // goroutines in this child
	helperTotal = "HERALD_CACHE_HELPER_TOTAL" // goroutines in all children
)

// childResult is what a child prints on its "RESULT " line.
type childResult struct {
	Calls, Errors, Wrong int
	Hits, Misses, Stale  float64
	Loads, Refreshes     float64
	FirstError           string
}

// runChildren starts one child per entry of n in mode, releases them at
// once when all are ready, and returns their results.
func runChildren(t *testing.T, srv *redistest.Server, rdb *redis.Client, mode string, n []int) []childResult {
	t.Helper()
	total := 0
	for _, k := range n {
		total += k
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	type child struct {
		cmd    *exec.Cmd
		stdout bytes.Buffer
		stderr bytes.Buffer
	}
	children := make([]*child, len(n))
	for i, k := range n {
		ch := &child{}
		ch.cmd = exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.timeout=60s")
		ch.cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperRedis+"="+srv.Addr,
			helperN+"="+strconv.Itoa(k), helperTotal+"="+strconv.Itoa(total))
		ch.cmd.Stdout, ch.cmd.Stderr = &ch.stdout, &ch.stderr
		if err := ch.cmd.Start(); err != nil {
			t.Fatalf("start child %d: %v", i, err)
		}
		children[i] = ch
	}
	var wg sync.WaitGroup
	errs := make([]error, len(children))
	for i, ch := range children {
		wg.Go(func() { errs[i] = ch.cmd.Wait() })
	}
	waitFor(t, "children ready", func() bool { return get(t, rdb, "ready") == len(n) })
	if err := rdb.Set(ctxT(t), "go", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if mode == "swr" {
		// Every call returns while the refresh is blocked: stale reads do
		// not wait for it. Only then may the refresh finish.
		waitFor(t, "all stale reads served", func() bool { return get(t, rdb, "served") == total })
		if l := get(t, rdb, "loads"); l > 1 {
			t.Errorf("loads while the refresh is blocked: got %d, want at most 1", l)
		}
		if err := rdb.Set(ctxT(t), "release", "1", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	var results []childResult
	for i, ch := range children {
		if errs[i] != nil {
			t.Fatalf("child %d: %v\nstdout:\n%s\nstderr:\n%s", i, errs[i], ch.stdout.String(), ch.stderr.String())
		}
		found := false
		sc := bufio.NewScanner(&ch.stdout)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "RESULT "); ok {
				var r childResult
				if err := json.Unmarshal([]byte(line), &r); err != nil {
					t.Fatalf("child %d result %q: %v", i, line, err)
				}
				results = append(results, r)
				found = true
			}
		}
		if !found {
			t.Fatalf("child %d printed no result\nstdout:\n%s\nstderr:\n%s", i, ch.stdout.String(), ch.stderr.String())
		}
	}
	return results
}

func get(t testing.TB, rdb *redis.Client, key string) int {
	t.Helper()
	n, err := rdb.Get(ctxT(t), key).Int()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatalf("GET %s: %v", key, err)
	}
	return n
}

// 1000 concurrent misses of one key, from 3 processes, call the load
// function once in all.
func TestStampedeAcrossProcesses(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	results := runChildren(t, srv, rdb, "stampede", []int{334, 333, 333})
	var sum childResult
	for _, r := range results {
		sum.Calls += r.Calls
		sum.Errors += r.Errors
		sum.Wrong += r.Wrong
		sum.Hits += r.Hits
		sum.Misses += r.Misses
		sum.Loads += r.Loads
		if r.FirstError != "" {
			t.Errorf("a child's call failed: %s", r.FirstError)
		}
	}
	if sum.Calls != 1000 || sum.Errors != 0 || sum.Wrong != 0 {
		t.Errorf("calls: got %d (%d errors, %d wrong values), want 1000 good ones", sum.Calls, sum.Errors, sum.Wrong)
	}
	if l := get(t, rdb, "loads"); l != 1 {
		t.Errorf("loads across 3 processes: got %d, want 1", l)
	}
	if sum.Misses != 1000 || get(t, rdb, "missed") != 1000 {
		t.Errorf("misses: counted %v, seen by Redis %d, want 1000", sum.Misses, get(t, rdb, "missed"))
	}
	t.Logf("3 processes, 1000 calls: %v misses, %v hits, %v load(s)", sum.Misses, sum.Hits, sum.Loads)
}

// A stale entry read concurrently by 3 processes is served stale at once
// (the parent checks that every call returned while the refresh load was
// blocked) and refreshed exactly once.
func TestRefreshOnceAcrossProcesses(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	c, _ := newCache(t, rdb, cache.Config[string]{Name: "swr"})
	window := 10 * time.Minute
	if err := c.Set(ctxT(t), "hot", "v1", time.Minute, cache.Stale(window)); err != nil {
		t.Fatal(err)
	}
	makeStale(t, rdb, c.RedisKey("hot"), window)

	results := runChildren(t, srv, rdb, "swr", []int{100, 100, 100})
	var stale, refreshes float64
	for _, r := range results {
		if r.Errors != 0 || r.Wrong != 0 {
			t.Errorf("child: %d errors, %d values other than the stale one (%s)", r.Errors, r.Wrong, r.FirstError)
		}
		stale += r.Stale
		refreshes += r.Refreshes
	}
	if l := get(t, rdb, "loads"); l != 1 {
		t.Errorf("refresh loads across 3 processes: got %d, want 1", l)
	}
	if stale != 300 || refreshes != 1 {
		t.Errorf("counted %v stale reads and %v refreshes, want 300 and 1", stale, refreshes)
	}
	if v, err := c.Get(ctxT(t), "hot"); err != nil || v != "v2" {
		t.Errorf("after the refresh: got %q, %v, want v2", v, err)
	}
	if ttl := rdb.PTTL(ctxT(t), c.RedisKey("hot")).Val(); ttl <= window {
		t.Errorf("ttl after the refresh %v: want fresh again", ttl)
	}
}

// TestHelperProcess is a child of the cross-process tests; it does nothing
// in a normal run.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	n, _ := strconv.Atoi(os.Getenv(helperN))
	total, _ := strconv.Atoi(os.Getenv(helperTotal))
	opts := &redis.Options{Addr: os.Getenv(helperRedis), PoolSize: 64}
	rdb := redis.NewClient(opts) // coordination
	defer rdb.Close()
	crdb := redis.NewClient(opts) // the cache's
	defer crdb.Close()
	reg := prometheus.NewRegistry()
	c, err := cache.New(crdb, reg, cache.Config[string]{Name: mode, LockWait: 40 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	poll := func(what string, cond func() bool) error {
		deadline := time.Now().Add(40 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				return fmt.Errorf("child: timed out waiting for %s", what)
			}
			time.Sleep(time.Millisecond)
		}
		return nil
	}
	rdb.Incr(ctx, "ready")
	if err := poll("go", func() bool { return rdb.Exists(ctx, "go").Val() == 1 }); err != nil {
		t.Fatal(err)
	}

	var call func() (string, error)
	want := "from the database"
	switch mode {
	case "stampede":
		// The load returns once every call of every process has missed,
		// so that all of them overlap it.
		crdb.AddHook(missCounter{entry: c.RedisKey("hot"), rdb: rdb})
		load := func(ctx context.Context) (string, error) {
			rdb.Incr(ctx, "loads")
			err := poll("every call missed", func() bool { n, _ := rdb.Get(ctx, "missed").Int(); return n >= total })
			return want, err
		}
		call = func() (string, error) {
			return c.GetOrLoad(ctx, "hot", time.Minute, load)
		}
	case "swr":
		want = "v1" // the stale value, served at once
		load := func(ctx context.Context) (string, error) {
			rdb.Incr(ctx, "loads")
			err := poll("release", func() bool { return rdb.Exists(ctx, "release").Val() == 1 })
			return "v2", err
		}
		call = func() (string, error) {
			return c.GetOrLoad(ctx, "hot", time.Minute, load, cache.Stale(10*time.Minute))
		}
	default:
		t.Fatalf("unknown helper mode %q", mode)
	}

	var mu sync.Mutex
	var r childResult
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			v, err := call()
			mu.Lock()
			defer mu.Unlock()
			r.Calls++
			switch {
			case err != nil:
				r.Errors++
				if r.FirstError == "" {
					r.FirstError = err.Error()
				}
			case v != want:
				r.Wrong++
				if r.FirstError == "" {
					r.FirstError = fmt.Sprintf("got %q, want %q", v, want)
				}
			}
		})
	}
	wg.Wait()
	if mode == "swr" {
		rdb.IncrBy(ctx, "served", int64(n))
		// Whichever process refreshes must live until it stored.
		if err := poll("refreshed", func() bool { return rdb.Get(ctx, c.RedisKey("hot")).Val() == `"v2"` }); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	r.Hits = counter(t, reg, "herald_cache_hits_total", mode, "")
	r.Misses = counter(t, reg, "herald_cache_misses_total", mode, "")
	r.Stale = counter(t, reg, "herald_cache_stale_total", mode, "")
	r.Loads = counter(t, reg, "herald_cache_loads_total", mode, "")
	r.Refreshes = counter(t, reg, "herald_cache_refreshes_total", mode, "")
	b, _ := json.Marshal(r)
	fmt.Printf("RESULT %s\n", b)
}

// missCounter is a go-redis hook that INCRs "missed" through rdb for each
// GET of entry that finds nothing.
type missCounter struct {
	entry string
	rdb   *redis.Client
}

func (h missCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h missCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h missCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if args := cmd.Args(); cmd.Name() == "get" && len(args) == 2 && args[1] == h.entry && errors.Is(err, redis.Nil) {
			h.rdb.Incr(ctx, "missed")
		}
		return err
	}
}
