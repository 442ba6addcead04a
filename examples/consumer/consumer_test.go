package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

// TestRunHTTP runs the program against a stand-in gateway that follows the
// publish API contract.
func TestRunHTTP(t *testing.T) {
	var mu sync.Mutex
	var got []string
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, fmt.Sprintf("%s %s key=%q %s", r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("Idempotency-Key"), body))
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer k1" {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":{"code":"unauthorized","message":"wrong API key"}}`)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		if strings.HasSuffix(r.URL.Path, "/batch") {
			io.WriteString(w, `{"ids":["2-0","2-1"]}`)
			return
		}
		io.WriteString(w, `{"id":"1-0"}`)
	}))
	defer gw.Close()

	var out bytes.Buffer
	if err := run(t.Context(), env("HERALD_URL", gw.URL, "HERALD_API_KEY", "k1"), &out); err != nil {
		t.Fatalf("run: %v", err)
	}
	if want := "greeting 1-0\neffect.complete 2-0 2-1\n"; out.String() != want {
		t.Errorf("stdout: got %q, want %q", out.String(), want)
	}
	mu.Lock()
	reqs := append([]string(nil), got...)
	mu.Unlock()
	if len(reqs) != 2 ||
		reqs[0] != `/api/publish Bearer k1 key="" {"channel":"user:42","event":"greeting","data":{"text":"hello from another module"}}`+"\n" ||
		!strings.HasPrefix(reqs[1], `/api/publish/batch Bearer k1 key="consumer-example-job-1" {"items":[{"channel":"effect:6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b","event":"effect.complete","data":{"userEffectId":"6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b","resultUrl":"https://cdn.example/results/6f1c2b8e.png","timestamp":`) {
		t.Errorf("requests:\n%s", strings.Join(reqs, "\n"))
	}

	err := run(t.Context(), env("HERALD_URL", gw.URL, "HERALD_API_KEY", "wrong"), io.Discard)
	var ae *herald.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized || ae.Code != "unauthorized" {
		t.Errorf("wrong key: got %v, want a 401 *herald.APIError", err)
	}
}

// TestRunRedis runs the program against a redis-server of its own, started
// on a free loopback port (this module cannot use Herald's internal test
// helpers), and reads the result back from the history stream.
func TestRunRedis(t *testing.T) {
	addr := startRedis(t)
	var out bytes.Buffer
	if err := run(t.Context(), env("REDIS_URL", "redis://"+addr), &out); err != nil {
		t.Fatalf("run: %v", err)
	}
	fields := strings.Fields(out.String())
	if len(fields) != 5 {
		t.Fatalf("stdout: got %q", out.String())
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	h := history(t, rdb, "user:42")
	if len(h) != 2 || h[0][0] != fields[1] || h[1][0] != fields[4] {
		t.Fatalf("history of user:42: got %q; want the ids printed, %v", h, fields)
	}
	var data map[string]any
	if err := json.Unmarshal([]byte(h[1][2]), &data); err != nil || data["userEffectId"] != "6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b" {
		t.Errorf("effect.complete data: got %v, %v", h[1][2], err)
	}

	// The effect-complete publish carries an idempotency key: a second run
	// publishes the greeting again but not the completion.
	if err := run(t.Context(), env("REDIS_URL", "redis://"+addr), io.Discard); err != nil {
		t.Fatalf("second run: %v", err)
	}
	if n := len(history(t, rdb, "effect:6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b")); n != 1 {
		t.Errorf("effect history after two runs: got %d entries, want 1", n)
	}
}

// history reads a channel's history as Herald keeps it (docs/PROTOCOL.md
// §10: a list "herald:{hN}:h:{channel}" of "{id} {event} {data}" entries,
// newest first) and returns its entries oldest first, each split in three.
// It finds the key with KEYS, which is fine on the test's own Redis.
func history(t *testing.T, rdb *redis.Client, channel string) [][3]string {
	t.Helper()
	keys, err := rdb.Keys(t.Context(), "herald:{h*}:h:"+channel).Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("history key of %s: got %v, %v; want one", channel, keys, err)
	}
	entries, err := rdb.LRange(t.Context(), keys[0], 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make([][3]string, len(entries))
	for i, e := range entries {
		parts := strings.SplitN(e, " ", 3)
		if len(parts) != 3 {
			t.Fatalf("history entry %q: want {id} {event} {data}", e)
		}
		out[len(entries)-1-i] = [3]string(parts)
	}
	return out
}

// startRedis starts redis-server on a free loopback port, without
// persistence, and stops it when the test ends. It skips the test when
// redis-server is not installed.
func startRedis(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s not ready: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
