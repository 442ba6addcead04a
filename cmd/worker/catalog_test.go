package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/jobs"
	"github.com/heraldgw/herald/internal/redistest"
)

// startWorkerLog is startWorker that also returns the worker's log.
func startWorkerLog(t *testing.T, getenv func(string) string, args ...string) (stop func(), log *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	log = &syncBuffer{}
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, append([]string{"run"}, args...), getenv, io.Discard, log) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				if err != nil {
					t.Errorf("worker run: %v\nstderr:\n%s", err, log.String())
				}
			case <-time.After(10 * time.Second):
				t.Errorf("worker run did not return within 10s of cancel")
			}
			if t.Failed() {
				t.Logf("worker log:\n%s", log.String())
			}
		})
	}
	t.Cleanup(stop)
	return stop, log
}

// With --catalog, a job takes its kind's duration (--work is an hour, so a
// job that used it would never finish), a job of an unknown kind is
// acknowledged without being announced, and a change of the catalog file
// mid-run is noticed: the cached catalog is invalidated by tag and the new
// kind is processed.
func TestWorkerCatalog(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	file := filepath.Join(t.TempDir(), "catalog.json")
	write := func(s string) {
		t.Helper()
		// Written whole and renamed, as a deploy would, so that no check
		// reads it half-written.
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	write(`[{"kind":"blur","label":"Blur","durationMs":5,"params":{"radius":2}}]`)
	q := jobs.NewQueue(rdb, events.Names{})
	stop, log := startWorkerLog(t, env("REDIS_URL", srv.URL()), "--name", "w", "--work", "1h", "--block", "20ms",
		"--catalog", file, "--catalog-check", "20ms", "--metrics-addr", "127.0.0.1:0")

	enqueue := func(kind, effect string) {
		t.Helper()
		if _, err := q.Enqueue(ctxT(t), jobs.Job{User: "1", Effect: effect, Kind: kind}); err != nil {
			t.Fatal(err)
		}
	}
	acked := func(n int64) func() bool {
		return func() bool {
			g, err := rdb.XInfoGroups(ctxT(t), q.Stream()).Result()
			return err == nil && len(g) == 1 && g[0].EntriesRead == n && g[0].Pending == 0
		}
	}
	enqueue("blur", "e-blur")
	waitFor(t, "blur job announced", func() bool { return len(history(t, rdb, "effect:e-blur")) == 1 })
	enqueue("glow", "e-glow-1")
	waitFor(t, "both jobs acknowledged", acked(2))
	if h := history(t, rdb, "effect:e-glow-1"); len(h) != 0 {
		t.Errorf("job of an unknown kind was announced: %v", h)
	}
	if !strings.Contains(log.String(), "unknown effect kind") {
		t.Errorf("log does not mention the unknown kind:\n%s", log.String())
	}

	write(`[{"kind":"blur","durationMs":5},{"kind":"glow","label":"Glow","durationMs":5}]`)
	waitFor(t, "catalog change noticed", func() bool { return strings.Contains(log.String(), "catalog changed") })
	enqueue("glow", "e-glow-2")
	waitFor(t, "glow job announced", func() bool { return len(history(t, rdb, "effect:e-glow-2")) == 1 })
	waitFor(t, "all jobs acknowledged", acked(3))

	// The catalog cache's counters are served with --metrics-addr.
	m := regexp.MustCompile(`msg="serving metrics" addr=(\S+)`).FindStringSubmatch(log.String())
	if m == nil {
		t.Fatalf("no metrics address in the log:\n%s", log.String())
	}
	resp, err := http.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `herald_cache_loads_total{cache="catalog"}`) {
		t.Errorf("/metrics lacks the catalog cache's counters:\n%s", body)
	}
	stop()

	// The catalog was cached under Herald's own keys, tagged "catalog".
	keys := scanKeys(t, rdb, "herald:cache:catalog:*")
	var entries int
	for _, k := range keys {
		if strings.HasPrefix(k, "herald:cache:catalog:v:") {
			entries++
		}
	}
	if entries != 1 || !slices.Contains(keys, "herald:cache:catalog:t:catalog") {
		t.Errorf("catalog cache keys: got %v, want one entry and the tag set", keys)
	}
}

// A catalog that cannot be had at start stops the worker with a message
// naming the flag.
func TestWorkerCatalogErrors(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`[{"kind":""}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{"--catalog", filepath.Join(dir, "nope.json")}, "no such file"},
		{"invalid catalog", []string{"--catalog", bad}, "empty kind"},
		{"bad freshness", []string{"--catalog", bad, "--catalog-fresh", "0s"}, "--catalog-fresh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(ctxT(t), append([]string{"run", "--name", "w"}, tc.args...), env("REDIS_URL", srv.URL()), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error mentioning %q", err, tc.want)
			}
			if tc.want == "--catalog-fresh" && !errors.Is(err, errUsage) {
				t.Errorf("got %v, want a usage error", err)
			}
		})
	}
}

func scanKeys(t *testing.T, rdb *redis.Client, match string) []string {
	t.Helper()
	var keys []string
	iter := rdb.Scan(ctxT(t), 0, match, 100).Iterator()
	for iter.Next(ctxT(t)) {
		if k := iter.Val(); !slices.Contains(keys, k) { // SCAN may repeat a key
			keys = append(keys, k)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return keys
}

// The example catalog parses and defines every kind "worker demo" enqueues.
func TestExampleCatalog(t *testing.T) {
	data, err := os.ReadFile("catalog.example.json")
	if err != nil {
		t.Fatal(err)
	}
	c, err := jobs.ParseCatalog(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range demoKinds {
		if e, ok := c.Lookup(kind); !ok || e.Duration() <= 0 {
			t.Errorf("kind %q: got %+v, %v, want a definition with a duration", kind, e, ok)
		}
	}
}
