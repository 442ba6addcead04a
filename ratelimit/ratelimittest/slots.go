package ratelimittest

import (
	"context"
	"sync"
	"testing"

	"github.com/heraldgw/herald/ratelimit"
)

// RunConcurrency runs the concurrency-limiter suite. newLimiter returns a
// limiter; limiters of one run may share a backend.
func RunConcurrency(t *testing.T, newLimiter func(t *testing.T) Slots) {
	ctx := context.Background()
	acquire := func(t *testing.T, s Slots, user string, limit int) (ratelimit.Lease, ratelimit.Result) {
		t.Helper()
		l, r, err := s.Acquire(ctx, user, limit)
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		if !r.Allowed && l != (ratelimit.Lease{}) {
			t.Fatalf("refused Acquire returned a lease")
		}
		return l, r
	}
	release := func(t *testing.T, s Slots, l ratelimit.Lease) {
		t.Helper()
		if err := s.Release(ctx, l); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	t.Run("Cap", func(t *testing.T) {
		user := keyer(t)("u")
		s := newLimiter(t)
		var leases []ratelimit.Lease
		for i := range 3 {
			l, r := acquire(t, s, user, 3)
			check(t, "free slot", r, true, 3, 2-i)
			leases = append(leases, l)
		}
		_, r := acquire(t, s, user, 3)
		check(t, "all taken", r, false, 3, 0)
		release(t, s, leases[1])
		_, r = acquire(t, s, user, 3)
		check(t, "after a release", r, true, 3, 0)
	})
	t.Run("ReleaseTwice", func(t *testing.T) {
		user := keyer(t)("u")
		s := newLimiter(t)
		l, _ := acquire(t, s, user, 1)
		release(t, s, l)
		release(t, s, l)
		release(t, s, ratelimit.Lease{})
		_, r := acquire(t, s, user, 1)
		check(t, "after release", r, true, 1, 0)
		_, r = acquire(t, s, user, 1)
		check(t, "a double release frees nothing more", r, false, 1, 0)
	})
	t.Run("PerCallLimit", func(t *testing.T) {
		user := keyer(t)("u")
		s := newLimiter(t)
		acquire(t, s, user, 5)
		acquire(t, s, user, 5)
		_, r := acquire(t, s, user, 2)
		check(t, "2 held, limit 2", r, false, 2, 0)
		_, r = acquire(t, s, user, 3)
		check(t, "2 held, limit 3", r, true, 3, 0)
	})
	t.Run("UsersIndependent", func(t *testing.T) {
		k := keyer(t)
		s := newLimiter(t)
		_, r := acquire(t, s, k("a"), 1)
		check(t, "a", r, true, 1, 0)
		_, r = acquire(t, s, k("b"), 1)
		check(t, "b", r, true, 1, 0)
	})
	t.Run("Concurrent", func(t *testing.T) {
		user := keyer(t)("u")
		s := newLimiter(t)
		var mu sync.Mutex
		var leases []ratelimit.Lease
		got := Concurrently(t, 50, func(int) (ratelimit.Result, error) {
			l, r, err := s.Acquire(ctx, user, 3)
			if r.Allowed {
				mu.Lock()
				leases = append(leases, l)
				mu.Unlock()
			}
			return r, err
		})
		if got != 3 {
			t.Fatalf("acquired %d of cap 3 with 50 concurrent calls", got)
		}
		for _, l := range leases {
			release(t, s, l)
		}
		if got := Concurrently(t, 50, func(int) (ratelimit.Result, error) {
			_, r, err := s.Acquire(ctx, user, 3)
			return r, err
		}); got != 3 {
			t.Fatalf("after releasing all: acquired %d, want 3", got)
		}
	})
	t.Run("InvalidLimit", func(t *testing.T) {
		_, _, err := newLimiter(t).Acquire(ctx, keyer(t)("u"), 0)
		wantInvalid(t, "Acquire with limit 0", err)
	})
	t.Run("ContextDone", func(t *testing.T) {
		_, r, err := newLimiter(t).Acquire(cancelled(), keyer(t)("u"), 1)
		if err == nil || r.Allowed {
			t.Fatalf("cancelled context: got %+v, %v; want an error", r, err)
		}
	})
}
