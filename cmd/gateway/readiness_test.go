package main

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/redistest"
)

// TestReadinessDoesNotFlap stalls Redis for 2.5 s (DEBUG SLEEP) while the
// gateway's client reads with a 500 ms timeout, so that one or two of its
// once-a-second pings fail at their 1 s deadline (never three: the third
// starts at least 2 s into the stall) while Redis is otherwise fine:
// /readyz stays 200 throughout and nothing is logged as unreachable. Then
// Redis really goes: /readyz says why.
func TestReadinessDoesNotFlap(t *testing.T) {
	srv := redistest.Start(t, "--enable-debug-command", "yes")
	r := startReplica(t, "r", map[string]string{"REDIS_URL": srv.URL() + "?read_timeout=500ms"})

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var statuses []int
	wg.Go(func() {
		c := &http.Client{Timeout: 5 * time.Second}
		for ctx.Err() == nil {
			resp, err := c.Get(r.url("/readyz"))
			if err != nil {
				continue
			}
			resp.Body.Close()
			mu.Lock()
			statuses = append(statuses, resp.StatusCode)
			mu.Unlock()
		}
	})
	eventually(t, "the first readiness answers", func() bool { mu.Lock(); defer mu.Unlock(); return len(statuses) > 0 })
	slow := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 10 * time.Second})
	defer slow.Close()
	if err := slow.Do(context.Background(), "DEBUG", "SLEEP", "2.5").Err(); err != nil {
		t.Fatal(err)
	}
	// The pings that missed their deadline have failed by now; the next
	// one answers: the probe logged them at debug level.
	eventually(t, "a ping to fail", func() bool { return strings.Contains(r.logs.String(), "backend ping failed") })
	sid := r.newSession(t, "u") // Redis answers again
	cancel()
	wg.Wait()
	for i, st := range statuses {
		if st != http.StatusOK {
			t.Fatalf("readyz answer %d of %d during the stall: %d, want 200", i, len(statuses), st)
		}
	}
	if strings.Contains(r.logs.String(), "backend unreachable") {
		t.Errorf("one stall was called an outage:\n%s", r.logs)
	}
	c := dial(t, r.wsURL(""), bearerHeader(sid))
	c.nextOf("welcome")

	srv.Kill()
	var body map[string]any
	eventually(t, "readyz to fail", func() bool {
		var st int
		st, body = r.api(t, "GET", "/readyz", "", nil)
		return st == http.StatusServiceUnavailable
	})
	if e, _ := body["error"].(map[string]any); !strings.Contains(e["message"].(string), "3 pings in a row failed") {
		t.Errorf("readyz body %v, want it to say why", body)
	}
	srv.Restart()
	eventually(t, "readyz to recover", func() bool { st, _ := r.api(t, "GET", "/readyz", "", nil); return st == http.StatusOK })
}
