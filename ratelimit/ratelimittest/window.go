package ratelimittest

import (
	"context"
	"testing"
	"time"

	"github.com/heraldgw/herald/ratelimit"
)

// RunSlidingWindow runs the sliding-window suite. newLimiter returns a
// limiter for cfg; limiters of one run may share a backend.
func RunSlidingWindow(t *testing.T, newLimiter func(t *testing.T, cfg ratelimit.SlidingWindowConfig) ratelimit.Limiter) {
	ctx := context.Background()
	t.Run("Limit", func(t *testing.T) {
		key := keyer(t)("k")
		l := newLimiter(t, ratelimit.SlidingWindowConfig{Limit: 3, Window: time.Minute})
		for i := range 3 {
			r := mustAllow(t, l, key)
			check(t, "admitted", r, true, 3, 2-i)
			within(t, "Reset", r.Reset, time.Minute)
		}
		for range 2 {
			r := mustAllow(t, l, key)
			check(t, "over the limit", r, false, 3, 0)
			within(t, "RetryAfter", r.RetryAfter, time.Minute)
			within(t, "Reset", r.Reset, time.Minute)
		}
	})
	t.Run("LimitOne", func(t *testing.T) {
		key := keyer(t)("k")
		l := newLimiter(t, ratelimit.SlidingWindowConfig{Limit: 1, Window: time.Minute})
		check(t, "first", mustAllow(t, l, key), true, 1, 0)
		check(t, "second", mustAllow(t, l, key), false, 1, 0)
	})
	t.Run("KeysIndependent", func(t *testing.T) {
		k := keyer(t)
		l := newLimiter(t, ratelimit.SlidingWindowConfig{Limit: 1, Window: time.Minute})
		check(t, "a", mustAllow(t, l, k("a")), true, 1, 0)
		check(t, "b", mustAllow(t, l, k("b")), true, 1, 0)
		check(t, "a again", mustAllow(t, l, k("a")), false, 1, 0)
	})
	t.Run("RefusedNotRecorded", func(t *testing.T) {
		// The classic snippet records refused requests too, so a client
		// that keeps knocking faster than the window is locked out for
		// ever. Knock every few ms until admitted again.
		key := keyer(t)("k")
		l := newLimiter(t, ratelimit.SlidingWindowConfig{Limit: 2, Window: 100 * time.Millisecond})
		mustAllow(t, l, key)
		mustAllow(t, l, key)
		refused := 0
		WaitFor(t, 5*time.Second, "hammering client admitted again", func() bool {
			r := mustAllow(t, l, key)
			if !r.Allowed {
				refused++
			}
			return r.Allowed
		})
		if refused == 0 {
			t.Fatal("no request was refused: the window passed before the test could knock")
		}
	})
	t.Run("WindowPasses", func(t *testing.T) {
		key := keyer(t)("k")
		l := newLimiter(t, ratelimit.SlidingWindowConfig{Limit: 3, Window: 50 * time.Millisecond})
		for range 3 {
			mustAllow(t, l, key)
		}
		// Probing spends requests too, so: wait for one to pass, let a few
		// windows go by untouched (the clock is what this test is about),
		// then the whole limit is there again.
		WaitFor(t, 5*time.Second, "a request admitted again", func() bool { return mustAllow(t, l, key).Allowed })
		for quiet := time.Now(); time.Since(quiet) < 3*50*time.Millisecond; {
			time.Sleep(10 * time.Millisecond)
		}
		for i := range 3 {
			if r := mustAllow(t, l, key); !r.Allowed || r.Remaining != 2-i {
				t.Fatalf("request %d of a passed window: %+v, want allowed with %d remaining", i+1, r, 2-i)
			}
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		key := keyer(t)("k")
		l := newLimiter(t, ratelimit.SlidingWindowConfig{Limit: 20, Window: time.Minute})
		if got := Concurrently(t, 100, func(int) (ratelimit.Result, error) { return l.Allow(ctx, key) }); got != 20 {
			t.Fatalf("admitted %d of 100 concurrent requests, want 20", got)
		}
	})
	t.Run("ContextDone", func(t *testing.T) {
		l := newLimiter(t, ratelimit.SlidingWindowConfig{Limit: 1, Window: time.Minute})
		r, err := l.Allow(cancelled(), keyer(t)("k"))
		if err == nil || r.Allowed {
			t.Fatalf("cancelled context: got %+v, %v; want an error", r, err)
		}
	})
}

func mustAllow(t *testing.T, l ratelimit.Limiter, key string) ratelimit.Result {
	t.Helper()
	r, err := l.Allow(context.Background(), key)
	if err != nil {
		t.Fatalf("Allow: %v", err)
	}
	return r
}
