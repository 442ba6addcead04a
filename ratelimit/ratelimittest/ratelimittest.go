// Package ratelimittest holds the conformance suites every limiter of
// package ratelimit passes, so that the Redis implementations and their
// in-memory twins behave alike. The suites run on the real clock (a Redis
// server's clock cannot be moved), so they never depend on exact timings:
// where time must pass they poll with a deadline.
package ratelimittest

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldgw/herald/ratelimit"
)

// Bucket is a token-bucket limiter: a Limiter that can spend n tokens.
type Bucket interface {
	ratelimit.Limiter
	AllowN(ctx context.Context, key string, n int) (ratelimit.Result, error)
}

// Slots is a concurrency limiter.
type Slots interface {
	Acquire(ctx context.Context, user string, limit int) (ratelimit.Lease, ratelimit.Result, error)
	Release(ctx context.Context, l ratelimit.Lease) error
}

// keyer returns a function naming keys unique to this test, so that tests
// sharing a Redis never see each other's keys.
func keyer(t *testing.T) func(string) string {
	id := rand.Text()[:10]
	return func(name string) string { return "rlt-" + id + "-" + name }
}

// WaitFor calls try until it reports true, failing the test after
// deadline. It is how the suites let real time pass without sleeping a
// guessed amount.
func WaitFor(t *testing.T, deadline time.Duration, what string, try func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !try() {
		if time.Now().After(end) {
			t.Fatalf("%s: not within %v", what, deadline)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Concurrently runs call(0), …, call(n-1) at once, released together, and
// returns how many were admitted. An error fails the test.
func Concurrently(t *testing.T, n int, call func(i int) (ratelimit.Result, error)) int {
	t.Helper()
	var allowed atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			<-start
			r, err := call(i)
			if err != nil {
				errs <- err
				return
			}
			if r.Allowed {
				allowed.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent call: %v", err)
	}
	return int(allowed.Load())
}

func cancelled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func wantInvalid(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ratelimit.ErrInvalidArgument) {
		t.Errorf("%s: got error %v, want ErrInvalidArgument", what, err)
	}
}

// check compares the counters of a Result; durations are checked apart.
func check(t *testing.T, what string, got ratelimit.Result, allowed bool, limit, remaining int) {
	t.Helper()
	if got.Allowed != allowed || got.Limit != limit || got.Remaining != remaining {
		t.Fatalf("%s: got allowed=%v limit=%d remaining=%d, want %v %d %d",
			what, got.Allowed, got.Limit, got.Remaining, allowed, limit, remaining)
	}
	if allowed && got.RetryAfter != 0 {
		t.Fatalf("%s: admitted with RetryAfter %v, want 0", what, got.RetryAfter)
	}
	if !allowed && got.RetryAfter <= 0 {
		t.Fatalf("%s: refused with RetryAfter %v, want > 0", what, got.RetryAfter)
	}
}

// within fails unless 0 < d ≤ most.
func within(t *testing.T, what string, d, most time.Duration) {
	t.Helper()
	if d <= 0 || d > most {
		t.Fatalf("%s: got %v, want in (0, %v]", what, d, most)
	}
}
