package ratelimit_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldgw/herald/ratelimit"
)

// concurrently runs call(0..n-1) at once, released together, and counts the
// admitted results.
func concurrently(t *testing.T, n int, call func(i int) (ratelimit.Result, error)) int {
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

// waitFor polls try until it reports true, failing after deadline.
func waitFor(t *testing.T, deadline time.Duration, what string, try func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !try() {
		if time.Now().After(end) {
			t.Fatalf("%s: not within %v", what, deadline)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
