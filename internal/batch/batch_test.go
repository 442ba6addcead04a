package batch

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestContextEndsWhenEveryCallerGaveUp(t *testing.T) {
	a, cancelA := context.WithCancel(context.Background())
	b, cancelB := context.WithCancel(context.Background())
	ctx, cancel := Context([]context.Context{a, b}, time.Hour)
	defer cancel()
	cancelA()
	select {
	case <-ctx.Done():
		t.Fatal("ended when one of two callers gave up")
	default:
	}
	cancelB()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("still running when every caller gave up")
	}
}

func TestContextTimeoutAndCancel(t *testing.T) {
	ctx, cancel := Context([]context.Context{context.Background()}, time.Millisecond)
	defer cancel()
	<-ctx.Done() // the timeout ends it
	ctx, cancel = Context([]context.Context{context.Background()}, time.Hour)
	cancel()
	if ctx.Err() == nil {
		t.Fatal("cancel did not end it")
	}
}

// TestCombinerBatchesWaitingRequests: requests that arrive while a call is
// under way go out together in the next one, in arrival order, within
// MaxWeight; each gets its own result.
func TestCombinerBatchesWaitingRequests(t *testing.T) {
	release, started := make(chan struct{}), make(chan struct{})
	var calls [][]int
	b := Combiner[int, int]{
		MaxWeight: 5, Timeout: time.Minute,
		Run: func(_ context.Context, key string, reqs []int) ([]int, error) {
			calls = append(calls, reqs) // one goroutine per key: no race
			if len(calls) == 1 {
				close(started)
				<-release // hold the first call while others queue
			}
			out := make([]int, len(reqs))
			for i, r := range reqs {
				out[i] = r * 10
			}
			return out, nil
		},
	}
	results := make(chan int, 10)
	go func() { r, _ := b.Do(context.Background(), "k", 0); results <- r }()
	waitQueued := func(n int) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			b.mu.Lock()
			got := 0
			if ks := b.keys["k"]; ks != nil {
				got = len(ks.waiting)
			}
			b.mu.Unlock()
			if got == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d requests waiting, want %d", got, n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	<-started // the first is under way
	for i := 1; i <= 7; i++ {
		go func() { r, _ := b.Do(context.Background(), "k", i); results <- r }()
		waitQueued(i)
	}
	close(release)
	sum := 0
	for range 8 {
		sum += <-results
	}
	if sum != 10*(0+1+2+3+4+5+6+7) {
		t.Fatalf("results sum to %d", sum)
	}
	if len(calls) != 3 || len(calls[1]) != 5 || len(calls[2]) != 2 {
		t.Fatalf("calls %v, want the first alone, then 5 (MaxWeight), then 2", calls)
	}
}

// TestCombinerServesEveryRequestAndEndsIdle has many callers on a few keys,
// in bursts with pauses longer and shorter than linger between them, so
// that requests meet goroutines that are busy, lingering, timing out and
// gone: every request gets its own result, no key ever has more calls
// under way than Concurrency, and once all is served no key holds state.
func TestCombinerServesEveryRequestAndEndsIdle(t *testing.T) {
	var mu sync.Mutex
	inFlight := map[string]int{}
	b := Combiner[int, int]{
		Concurrency: 2, MaxWeight: 3, Timeout: time.Minute,
		Run: func(_ context.Context, key string, reqs []int) ([]int, error) {
			mu.Lock()
			inFlight[key]++
			n := inFlight[key]
			mu.Unlock()
			if n > 2 {
				t.Errorf("%d calls under way for %s, want at most 2", n, key)
			}
			time.Sleep(100 * time.Microsecond)
			mu.Lock()
			inFlight[key]--
			mu.Unlock()
			out := make([]int, len(reqs))
			for i, r := range reqs {
				out[i] = r + 1
			}
			return out, nil
		},
	}
	var wg sync.WaitGroup
	for burst := range 20 {
		for i := range 30 {
			wg.Go(func() {
				key := fmt.Sprint("k", i%3)
				// A request no goroutine takes fails here, not as a hung test.
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				r, err := b.Do(ctx, key, burst*100+i)
				if err != nil || r != burst*100+i+1 {
					t.Errorf("request %d: %d, %v", burst*100+i, r, err)
				}
			})
		}
		time.Sleep(time.Duration(burst%4) * time.Millisecond) // 0 to 3 linger periods and a half
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		n := len(b.keys)
		b.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d keys still hold state after every request was served", n)
		}
		time.Sleep(time.Millisecond)
	}
}
