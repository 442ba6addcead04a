package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/jobs"
	"github.com/heraldgw/herald/internal/redistest"
)

// TestOnACluster: with HERALD_REDIS_MODE=cluster and a cluster URL the
// worker publishes (sharded, each write confirmed by a replica), enqueues
// demo jobs, and runs them with its catalog cached in the cluster.
func TestOnACluster(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	rdb := c.Client()
	getenv := env("REDIS_URL", c.URL(), "HERALD_REDIS_MODE", "cluster")

	out := runOK(t, getenv, "publish", "--user", "42", "--effect", "e-1", "--url", "/r/e-1.png")
	ids := strings.Fields(out)
	for i, ch := range []string{"effect:e-1", "user:42"} {
		if h := history(t, rdb, ch); len(ids) != 2 || len(h) != 1 || h[0].ID != ids[i] {
			t.Fatalf("history of %s: %v, want the published %v", ch, h, ids)
		}
	}

	file := filepath.Join(t.TempDir(), "catalog.json")
	if err := os.WriteFile(file, []byte(`[{"kind":"blur","durationMs":5}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	q := jobs.NewQueue(rdb, events.Names{})
	if _, err := q.Enqueue(ctxT(t), jobs.Job{User: "7", Effect: "e-2", Kind: "blur"}, jobs.Job{User: "7", Effect: "e-3", Kind: "blur"}); err != nil {
		t.Fatal(err)
	}
	stop := startWorker(t, getenv, "--name", "w", "--work", "5ms", "--block", "20ms", "--catalog", file)
	waitFor(t, "both jobs announced", func() bool { return len(history(t, rdb, "user:7")) == 2 })
	stop()
	node, err := rdb.MasterForKey(ctxT(t), "herald:cache:{catalog}")
	if err != nil {
		t.Fatal(err)
	}
	if keys := scanKeys(t, node, "herald:cache:{catalog}:v:*"); len(keys) != 1 {
		t.Errorf("catalog entries under the hash-tagged namespace: %v, want one", keys)
	}

	err = run(ctxT(t), []string{"publish", "--effect", "e", "--url", "/r/e.png"}, env("REDIS_URL", c.URL(), "HERALD_REDIS_MODE", "sharded"), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "HERALD_REDIS_MODE") {
		t.Errorf("a bad mode: %v, want an error naming HERALD_REDIS_MODE", err)
	}
}
