package ratelimit_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/heraldgw/herald/ratelimit"
	"github.com/heraldgw/herald/ratelimit/ratelimittest"
)

var (
	_ ratelimittest.Bucket = (*ratelimit.MemoryTokenBucket)(nil)
	_ ratelimittest.Slots  = (*ratelimit.MemoryConcurrency)(nil)
)

func TestMemorySlidingWindow(t *testing.T) {
	ratelimittest.RunSlidingWindow(t, func(t *testing.T, cfg ratelimit.SlidingWindowConfig) ratelimit.Limiter {
		l, err := ratelimit.NewMemorySlidingWindow(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return l
	})
}

func TestMemoryTokenBucket(t *testing.T) {
	ratelimittest.RunTokenBucket(t, func(t *testing.T, cfg ratelimit.TokenBucketConfig) ratelimittest.Bucket {
		b, err := ratelimit.NewMemoryTokenBucket(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestMemoryConcurrency(t *testing.T) {
	ratelimittest.RunConcurrency(t, func(t *testing.T) ratelimittest.Slots {
		c, err := ratelimit.NewMemoryConcurrency(ratelimit.ConcurrencyConfig{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	})
}

// clock is a settable clock for the memory twins.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.UnixMilli(1_732_600_000_000)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Set moves the clock to ms milliseconds after its start (backwards too).
func (c *clock) Set(ms int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = time.UnixMilli(1_732_600_000_000 + ms)
}

// step is one call at a clock time and the Result it must give.
type step struct {
	at        int64 // ms after the clock's start
	n         int   // tokens to spend; 0 means 1 (token bucket only)
	allowed   bool
	remaining int
	reset     int64 // ms
	retry     int64 // ms
}

func runSteps(t *testing.T, steps []step, allow func(n int) (ratelimit.Result, error), clk *clock) {
	t.Helper()
	for i, s := range steps {
		clk.Set(s.at)
		r, err := allow(max(s.n, 1))
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		want := ratelimit.Result{Allowed: s.allowed, Remaining: s.remaining,
			Reset: time.Duration(s.reset) * time.Millisecond, RetryAfter: time.Duration(s.retry) * time.Millisecond}
		r.Limit = 0
		if r != want {
			t.Fatalf("step %d at %d ms: got %+v, want %+v", i, s.at, r, want)
		}
	}
}

func TestMemorySlidingWindowClock(t *testing.T) {
	tests := []struct {
		name   string
		limit  int
		window time.Duration
		steps  []step
	}{
		{"limit 1", 1, time.Second, []step{
			{at: 0, allowed: true, remaining: 0, reset: 1000},
			{at: 1, allowed: false, remaining: 0, reset: 999, retry: 999},
			{at: 999, allowed: false, remaining: 0, reset: 1, retry: 1},
			// An entry at t counts while now < t+window: at 1000 it is gone.
			{at: 1000, allowed: true, remaining: 0, reset: 1000},
		}},
		{"window boundaries", 3, time.Second, []step{
			{at: 0, allowed: true, remaining: 2, reset: 1000},
			{at: 400, allowed: true, remaining: 1, reset: 600},
			{at: 800, allowed: true, remaining: 0, reset: 200},
			{at: 999, allowed: false, remaining: 0, reset: 1, retry: 1},
			{at: 1000, allowed: true, remaining: 0, reset: 400},
			{at: 1001, allowed: false, remaining: 0, reset: 399, retry: 399},
			{at: 1400, allowed: true, remaining: 0, reset: 400},
			{at: 3000, allowed: true, remaining: 2, reset: 1000},
		}},
		{"same millisecond counts twice", 2, time.Second, []step{
			{at: 5, allowed: true, remaining: 1, reset: 1000},
			{at: 5, allowed: true, remaining: 0, reset: 1000},
			{at: 5, allowed: false, remaining: 0, reset: 1000, retry: 1000},
		}},
		{"refused not recorded", 2, 100 * time.Millisecond, []step{
			{at: 0, allowed: true, remaining: 1, reset: 100},
			{at: 0, allowed: true, remaining: 0, reset: 100},
			{at: 50, allowed: false, remaining: 0, reset: 50, retry: 50},
			{at: 90, allowed: false, remaining: 0, reset: 10, retry: 10},
			{at: 99, allowed: false, remaining: 0, reset: 1, retry: 1},
			{at: 100, allowed: true, remaining: 1, reset: 100},
			{at: 100, allowed: true, remaining: 0, reset: 100},
		}},
		{"clock steps back", 2, time.Second, []step{
			{at: 1000, allowed: true, remaining: 1, reset: 1000},
			{at: 500, allowed: true, remaining: 0, reset: 1000}, // sorted by time, not by arrival
			{at: 1500, allowed: true, remaining: 0, reset: 500}, // the entry at 500 left
			{at: 1501, allowed: false, remaining: 0, reset: 499, retry: 499},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			l, err := ratelimit.NewMemorySlidingWindow(ratelimit.SlidingWindowConfig{Limit: tt.limit, Window: tt.window}, clk.Now)
			if err != nil {
				t.Fatal(err)
			}
			runSteps(t, tt.steps, func(int) (ratelimit.Result, error) { return l.Allow(context.Background(), "k") }, clk)
		})
	}
}

func TestMemoryTokenBucketClock(t *testing.T) {
	tests := []struct {
		name  string
		rate  float64
		burst int
		steps []step
	}{
		{"burst exhaustion and refill", 10, 3, []step{
			{at: 0, allowed: true, remaining: 2, reset: 100},
			{at: 0, allowed: true, remaining: 1, reset: 100},
			{at: 0, allowed: true, remaining: 0, reset: 100},
			{at: 0, allowed: false, remaining: 0, reset: 100, retry: 100},
			{at: 50, allowed: false, remaining: 0, reset: 50, retry: 50}, // half a token
			{at: 100, allowed: true, remaining: 0, reset: 100},
			{at: 10_000, allowed: true, remaining: 2, reset: 100}, // capped at burst
		}},
		{"cost n", 10, 3, []step{
			{at: 0, n: 3, allowed: true, remaining: 0, reset: 100},
			{at: 100, n: 2, allowed: false, remaining: 1, reset: 100, retry: 100},
			{at: 200, n: 2, allowed: true, remaining: 0, reset: 100},
			{at: 200, n: 3, allowed: false, remaining: 0, reset: 100, retry: 300},
		}},
		{"limit 1, slow rate", 0.5, 1, []step{
			{at: 0, allowed: true, remaining: 0, reset: 2000},
			{at: 1000, allowed: false, remaining: 0, reset: 1000, retry: 1000},
			{at: 2000, allowed: true, remaining: 0, reset: 2000},
		}},
		{"clock steps back", 10, 3, []step{
			{at: 10_000, n: 3, allowed: true, remaining: 0, reset: 100},
			// Earlier than lastRefill: no refill, but refill resumes from here
			// rather than waiting for the clock to catch up.
			{at: 0, allowed: false, remaining: 0, reset: 100, retry: 100},
			{at: 100, allowed: true, remaining: 0, reset: 100},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			b, err := ratelimit.NewMemoryTokenBucket(ratelimit.TokenBucketConfig{Rate: tt.rate, Burst: tt.burst}, clk.Now)
			if err != nil {
				t.Fatal(err)
			}
			runSteps(t, tt.steps, func(n int) (ratelimit.Result, error) { return b.AllowN(context.Background(), "k", n) }, clk)
		})
	}
}

// TestMemorySweep checks that idle keys do not pile up in the twins.
func TestMemorySweep(t *testing.T) {
	clk := newClock()
	w, _ := ratelimit.NewMemorySlidingWindow(ratelimit.SlidingWindowConfig{Limit: 1, Window: time.Second}, clk.Now)
	b, _ := ratelimit.NewMemoryTokenBucket(ratelimit.TokenBucketConfig{Rate: 1, Burst: 1}, clk.Now)
	ctx := context.Background()
	for i := range 20_000 {
		clk.Set(int64(i)) // 1 ms apart: each key is idle after 1 s
		key := strconv.Itoa(i)
		if _, err := w.Allow(ctx, key); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Allow(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	if n := ratelimit.MemoryKeys(w); n > 4096 {
		t.Errorf("sliding window holds %d keys after 20000 idle ones, want ≤ 4096", n)
	}
	if n := ratelimit.MemoryKeys(b); n > 4096 {
		t.Errorf("token bucket holds %d keys after 20000 idle ones, want ≤ 4096", n)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []ratelimit.SlidingWindowConfig{{Limit: 0, Window: time.Second}, {Limit: 1, Window: time.Microsecond}} {
		if _, err := ratelimit.NewMemorySlidingWindow(cfg, nil); !isInvalid(err) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument", cfg, err)
		}
		if _, err := ratelimit.NewSlidingWindow(nil, cfg); !isInvalid(err) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument", cfg, err)
		}
	}
	for _, cfg := range []ratelimit.TokenBucketConfig{{Rate: 0, Burst: 1}, {Rate: -1, Burst: 1}, {Rate: 1, Burst: 0}} {
		if _, err := ratelimit.NewMemoryTokenBucket(cfg, nil); !isInvalid(err) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument", cfg, err)
		}
		if _, err := ratelimit.NewTokenBucket(nil, cfg); !isInvalid(err) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument", cfg, err)
		}
	}
	for _, cfg := range []ratelimit.ConcurrencyConfig{{LeaseTTL: time.Microsecond}, {RetryAfter: -time.Second}} {
		if _, err := ratelimit.NewMemoryConcurrency(cfg); !isInvalid(err) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument", cfg, err)
		}
		if _, err := ratelimit.NewConcurrency(nil, cfg, nil); !isInvalid(err) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument", cfg, err)
		}
	}
}

func isInvalid(err error) bool { return errors.Is(err, ratelimit.ErrInvalidArgument) }
