package events_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

// batches records what LogConfig.OnBatch reported.
type batches struct {
	mu     sync.Mutex
	events []int // per batch
	failed int   // batches with an error
}

func (b *batches) record(n int, _ time.Duration, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.events = append(b.events, n)
	if err != nil {
		b.failed++
	}
}

// take returns the batches recorded so far and their events, and forgets them.
func (b *batches) take() (count, events, failed int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range b.events {
		events += n
	}
	count, failed = len(b.events), b.failed
	b.events, b.failed = nil, 0
	return count, events, failed
}

// TestOnBatchReportsEveryBatch: every publish is reported once, as part of
// one batch; calls made at once share batches.
func TestOnBatchReportsEveryBatch(t *testing.T) {
	srv := redistest.Start(t)
	var got batches
	l := events.NewRedisLog(srv.Client(), events.Names{Prefix: "ob:"}, events.LogConfig{OnBatch: got.record})
	tests := []struct {
		name       string
		calls      int
		perCall    int
		concurrent bool
	}{
		{"one event", 1, 1, false},
		{"one call of five events", 1, 5, false},
		{"calls one after the other", 3, 2, false},
		{"calls at once", 100, 2, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var wg sync.WaitGroup
			for i := range tt.calls {
				publish := func() {
					var pubs []events.Publication
					for j := range tt.perCall {
						pubs = append(pubs, events.Publication{
							Channel: fmt.Sprintf("user:%d", (i+j)%7), Event: "e", Data: json.RawMessage(fmt.Sprint(j)),
						})
					}
					if _, err := l.Append(context.Background(), "", pubs...); err != nil {
						t.Error(err)
					}
				}
				if tt.concurrent {
					wg.Go(publish)
				} else {
					publish()
				}
			}
			wg.Wait()
			count, n, failed := got.take()
			if n != tt.calls*tt.perCall || failed != 0 {
				t.Errorf("got %d events in %d batches (%d failed), want %d events, none failed", n, count, failed, tt.calls*tt.perCall)
			}
			switch {
			case !tt.concurrent && count != tt.calls:
				t.Errorf("got %d batches, want one per call: %d", count, tt.calls)
			case tt.concurrent && (count < 1 || count > tt.calls):
				t.Errorf("got %d batches, want 1 to %d", count, tt.calls)
			}
		})
	}
}

// TestOnBatchReportsFailures: a batch whose script call failed is reported
// with its error.
func TestOnBatchReportsFailures(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1}) // fail at once
	t.Cleanup(func() { rdb.Close() })
	var got batches
	l := events.NewRedisLog(rdb, events.Names{}, events.LogConfig{OnBatch: got.record})
	srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := l.Append(ctx, "", events.Publication{Channel: "user:1", Event: "e"}); err == nil {
		t.Fatal("publish without Redis succeeded")
	}
	if count, n, failed := got.take(); count != 1 || n != 1 || failed != 1 {
		t.Errorf("got %d batch(es) of %d event(s), %d failed; want 1 of 1, failed", count, n, failed)
	}
}
