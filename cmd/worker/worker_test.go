package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/jobs"
	"github.com/heraldgw/herald/internal/redistest"
)

// syncBuffer is an io.Writer that a program running in another goroutine
// can write to while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// runOK runs the program to completion and returns its stdout.
func runOK(t *testing.T, getenv func(string) string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if err := run(ctxT(t), args, getenv, &stdout, &stderr); err != nil {
		t.Fatalf("run %v: %v\nstderr:\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

// startWorker runs "worker run args..." in the background; stop cancels it
// and waits for run to return nil.
func startWorker(t *testing.T, getenv func(string) string, args ...string) (stop func()) {
	t.Helper()
	stop, _ = startWorkerLog(t, getenv, args...)
	return stop
}

// waitFor polls cond until it holds or 15 s have passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// history returns the events of channel's history, oldest first.
func history(t *testing.T, rdb redis.UniversalClient, channel string) []events.Frame {
	t.Helper()
	r, err := events.NewRedisLog(rdb, events.Names{}, events.LogConfig{}).Range(ctxT(t), channel, "")
	if err != nil {
		t.Fatalf("read history: %v", err)
	}
	out := make([]events.Frame, len(r.Events))
	for i, e := range r.Events {
		if err := json.Unmarshal(e.Frame, &out[i]); err != nil {
			t.Fatalf("history frame %s: %v", e.Frame, err)
		}
	}
	return out
}

// classic decodes the data of a history entry.
func classic(t *testing.T, f events.Frame) events.Classic {
	t.Helper()
	var c events.Classic
	if err := json.Unmarshal(f.Data, &c); err != nil {
		t.Fatalf("history entry %s data: %v", f.ID, err)
	}
	if f.Event != "effect.complete" {
		t.Errorf("history entry %s event: got %v, want effect.complete", f.ID, f.Event)
	}
	return c
}

func pendingJobs(t *testing.T, rdb *redis.Client) int64 {
	t.Helper()
	p, err := rdb.XPending(ctxT(t), events.Names{}.Jobs(), "workers").Result()
	if err != nil {
		t.Fatalf("XPENDING: %v", err)
	}
	return p.Count
}

func TestPublishViaRedis(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	out := runOK(t, env("REDIS_URL", srv.URL()), "publish", "--user", "42", "--effect", "e-1", "--url", "https://cdn.example/e-1.png")
	ids := strings.Fields(out)
	if len(ids) != 2 {
		t.Fatalf("stdout: got %q, want two event ids", out)
	}
	for i, ch := range []string{"effect:e-1", "user:42"} {
		h := history(t, rdb, ch)
		if len(h) != 1 || h[0].ID != ids[i] {
			t.Fatalf("history of %s: got %v, want one entry %s", ch, h, ids[i])
		}
		if c := classic(t, h[0]); c.UserEffectID != "e-1" || c.UserID != "42" || c.ResultURL != "https://cdn.example/e-1.png" || c.Timestamp == 0 {
			t.Errorf("data on %s: got %+v", ch, c)
		}
	}

	// --redis-url wins over REDIS_URL; an idempotency key makes a repeat a no-op.
	args := []string{"publish", "--redis-url", srv.URL(), "--effect", "e-2", "--url", "/r/e-2.png", "--idempotency-key", "k1"}
	first := runOK(t, env("REDIS_URL", "redis://127.0.0.1:1"), args...)
	again := runOK(t, env(), args...)
	if first != again || len(history(t, rdb, "effect:e-2")) != 1 {
		t.Errorf("repeat with key: got %q then %q, history %d", first, again, len(history(t, rdb, "effect:e-2")))
	}
}

func TestPublishViaGateway(t *testing.T) {
	type got struct {
		auth, key, path string
		body            []byte
	}
	reqs := make(chan got, 1)
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		reqs <- got{r.Header.Get("Authorization"), r.Header.Get("Idempotency-Key"), r.URL.Path, b}
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, `{"ids":["5-0","5-1"]}`)
	}))
	defer gw.Close()
	out := runOK(t, env("HERALD_API_KEY", "k-from-env"), "publish", "--gateway", gw.URL, "--user", "7", "--effect", "e", "--url", "/r/e.png", "--kind", "blur")
	if out != "5-0\n5-1\n" {
		t.Errorf("stdout: got %q", out)
	}
	r := <-reqs
	if r.auth != "Bearer k-from-env" || r.path != "/api/publish/batch" || r.key != "" {
		t.Errorf("request: got %+v", r)
	}
	var body struct{ Items []events.Publication }
	if err := json.Unmarshal(r.body, &body); err != nil || len(body.Items) != 2 || body.Items[1].Channel != "user:7" ||
		!strings.Contains(string(body.Items[0].Data), `"kind":"blur"`) {
		t.Errorf("body: got %s (%v)", r.body, err)
	}

	// The gateway's own variable, HERALD_API_KEYS, works too (its first
	// key), and an address without a scheme is taken as http.
	for _, tc := range []struct {
		getenv  func(string) string
		gateway string
		want    string
	}{
		{env("HERALD_API_KEYS", "k-first, k-second"), gw.URL, "Bearer k-first"},
		{env("HERALD_API_KEY", "k-worker", "HERALD_API_KEYS", "k-gateway"), gw.URL, "Bearer k-worker"},
		{env("HERALD_API_KEY", "k"), strings.TrimPrefix(gw.URL, "http://"), "Bearer k"},
	} {
		runOK(t, tc.getenv, "publish", "--gateway", tc.gateway, "--user", "7", "--effect", "e", "--url", "https://cdn.example/e.png")
		if r := <-reqs; r.auth != tc.want || r.path != "/api/publish/batch" {
			t.Errorf("--gateway %s: request %+v, want Authorization %q", tc.gateway, r, tc.want)
		}
	}

	// A 401 from the gateway is the program's error.
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error":{"code":"unauthorized","message":"wrong API key"}}`)
	}))
	defer bad.Close()
	err := run(ctxT(t), []string{"publish", "--gateway", bad.URL, "--api-key", "nope", "--effect", "e", "--url", "/r/e.png"}, env(), io.Discard, io.Discard)
	var ae *herald.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Errorf("got %v, want a 401 APIError", err)
	}
}

func TestCommandLineErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		getenv func(string) string
		want   string
		usage  bool
	}{
		{"no command", nil, env(), "no command", true},
		{"unknown command", []string{"frobnicate"}, env(), "unknown command", true},
		{"unknown flag", []string{"demo", "--nope"}, env(), "nope", true},
		{"publish without effect", []string{"publish", "--url", "/r/e.png"}, env(), "--effect", true},
		{"publish without url", []string{"publish", "--effect", "e"}, env(), "--url", true},
		{"publish bad effect", []string{"publish", "--effect", "…", "--url", "/r/e.png"}, env(), `--effect "…": not usable in a channel name`, true},
		{"publish bad user", []string{"publish", "--effect", "e", "--user", "a b", "--url", "/r/e.png"}, env(), `--user "a b"`, true},
		{"publish relative url", []string{"publish", "--effect", "e", "--url", "u"}, env(), `--url "u": want an http(s) URL`, true},
		{"publish other scheme", []string{"publish", "--effect", "e", "--url", "ftp://x/e.png"}, env(), `--url "ftp://x/e.png"`, true},
		{"publish without redis", []string{"publish", "--effect", "e", "--url", "/r/e.png"}, env(), "REDIS_URL", false},
		{"gateway without key", []string{"publish", "--gateway", "http://127.0.0.1:1", "--effect", "e", "--url", "/r/e.png"}, env(), "HERALD_API_KEY", false},
		{"gateway with a path", []string{"publish", "--gateway", "localhost:8080/api", "--effect", "e", "--url", "/r/e.png"}, env("HERALD_API_KEY", "k"), "want the gateway's address", true},
		{"gateway other scheme", []string{"publish", "--gateway", "ws://localhost:8080", "--effect", "e", "--url", "/r/e.png"}, env("HERALD_API_KEY", "k"), "want the gateway's address", true},
		{"bad history size", []string{"publish", "--effect", "e", "--url", "/r/e.png"}, env("HERALD_HISTORY_SIZE", "lots"), "HERALD_HISTORY_SIZE", false},
		{"demo bad user", []string{"demo", "--user", "a b"}, env(), `--user "a b"`, true},
		{"run result url without effect", []string{"run", "--result-url", "/x.png"}, env(), "{effect}", true},
		{"bad redis url", []string{"demo"}, env("REDIS_URL", "postgres://secret@x"), "REDIS_URL", false},
		{"bad rate", []string{"demo", "--rate", "0"}, env(), "--rate", true},
		{"stray argument", []string{"run", "extra"}, env(), "extra", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(ctxT(t), tc.args, tc.getenv, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
			if errors.Is(err, errUsage) != tc.usage {
				t.Errorf("usage error: got %v, want %v", errors.Is(err, errUsage), tc.usage)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error shows the Redis URL's credentials: %v", err)
			}
		})
	}
	if err := run(ctxT(t), []string{"run", "-h"}, env(), io.Discard, io.Discard); err != nil {
		t.Errorf("-h: got %v, want nil", err)
	}
}

// Jobs enqueued by demo are processed by run, and each completion is
// published once on the effect's and the user's channel.
func TestDemoJobsAreProcessed(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	getenv := env("REDIS_URL", srv.URL())
	out := runOK(t, getenv, "demo", "--count", "3", "--rate", "1000", "--users", "2")
	if out != "enqueued 3 jobs on herald:jobs\n" {
		t.Errorf("demo stdout: got %q", out)
	}
	enqueued, err := rdb.XRange(ctxT(t), "herald:jobs", "-", "+").Result()
	if err != nil || len(enqueued) != 3 {
		t.Fatalf("job stream: got %v, %v", enqueued, err)
	}

	stop := startWorker(t, getenv, "--name", "w1", "--work", "10ms", "--block", "50ms", "--concurrency", "2")
	waitFor(t, "3 jobs read and acknowledged", func() bool {
		g, err := rdb.XInfoGroups(ctxT(t), "herald:jobs").Result()
		return err == nil && len(g) == 1 && g[0].EntriesRead == 3 && g[0].Pending == 0
	})
	stop()

	perUser := map[string]int{}
	for _, e := range enqueued {
		effect, user := e.Values["effect"].(string), e.Values["user"].(string)
		if user != "1" && user != "2" {
			t.Errorf("job %s: user %q not among 1..2", e.ID, user)
		}
		h := history(t, rdb, "effect:"+effect)
		if len(h) != 1 {
			t.Fatalf("history of effect:%s: got %d entries, want 1", effect, len(h))
		}
		c := classic(t, h[0])
		kind := e.Values["kind"].(string)
		if c.UserEffectID != effect || c.UserID != user || c.ResultURL != "/dev/results/"+effect+".svg" || c.Kind != kind || kind == "" {
			t.Errorf("completion of job %s: got %+v", e.ID, c)
		}
		perUser[user]++
	}
	for user, n := range perUser {
		if got := len(history(t, rdb, "user:"+user)); got != n {
			t.Errorf("history of user:%s: got %d events, want %d", user, got, n)
		}
	}
}

// A worker that published a job's completion and crashed before the ack
// leaves the job pending; another worker claims it after --claim-after,
// processes it again, and the completion is still in history exactly once.
// A job whose worker crashed before publishing is announced once too.
func TestCrashedWorkersJobNotifiesOnce(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	q := jobs.NewQueue(rdb, events.Names{})
	if err := rdb.XGroupCreateMkStream(ctxT(t), q.Stream(), "workers", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(ctxT(t), jobs.Job{User: "42", Effect: "published", Kind: "blur"}, jobs.Job{User: "42", Effect: "unpublished", Kind: "blur"}); err != nil {
		t.Fatal(err)
	}

	// Worker A reads both jobs, announces the first exactly as run does,
	// and dies before acknowledging either.
	res, err := rdb.XReadGroup(ctxT(t), &redis.XReadGroupArgs{Group: "workers", Consumer: "A", Streams: []string{q.Stream(), ">"}, Count: 2, Block: -1}).Result()
	if err != nil || len(res[0].Messages) != 2 {
		t.Fatalf("A reads: %v, %v", res, err)
	}
	a := &worker{pub: herald.NewRedisPublisher(rdb, herald.RedisConfig{}), resultURL: "https://a/{effect}.png", log: newLogger(io.Discard)}
	job := jobs.Job{ID: res[0].Messages[0].ID, User: "42", Effect: "published", Kind: "blur"}
	if err := a.process(ctxT(t), job); err != nil {
		t.Fatalf("A processes: %v", err)
	}
	firstIDs := []string{history(t, rdb, "effect:published")[0].ID, history(t, rdb, "user:42")[0].ID}

	// Worker B claims both once they have been idle for --claim-after.
	stop := startWorker(t, env("REDIS_URL", srv.URL()), "--name", "B", "--claim-after", "200ms", "--work", "10ms", "--block", "50ms")
	waitFor(t, "both jobs acknowledged", func() bool { return pendingJobs(t, rdb) == 0 })
	stop()

	if h := history(t, rdb, "effect:published"); len(h) != 1 || h[0].ID != firstIDs[0] {
		t.Errorf("history of effect:published: got %v, want only A's event %s", h, firstIDs[0])
	} else if c := classic(t, h[0]); c.ResultURL != "https://a/published.png" {
		t.Errorf("effect:published carries %q, want A's result", c.ResultURL)
	}
	if h := history(t, rdb, "effect:unpublished"); len(h) != 1 {
		t.Errorf("history of effect:unpublished: got %d entries, want 1", len(h))
	}
	user := history(t, rdb, "user:42")
	if len(user) != 2 || user[0].ID != firstIDs[1] || classic(t, user[1]).UserEffectID != "unpublished" {
		t.Errorf("history of user:42: got %v, want A's event then B's for the other job", user)
	}
}
