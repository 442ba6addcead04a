package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// go-redis's pool reaper and net/http's idle client conns end on
		// their own schedule; they are not Herald's goroutines.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}

const testAPIKey = "test-api-key-0123456789"

// replica is a gateway started in-process with run().
type replica struct {
	t      *testing.T
	name   string
	addr   string // host:port
	cancel context.CancelFunc
	done   chan error
	logs   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startReplica runs a gateway with env (plus test defaults), waits until
// it is ready, and stops it when the test ends.
func startReplica(t *testing.T, name string, env map[string]string) *replica {
	t.Helper()
	r := startReplicaUnready(t, name, env)
	eventually(t, name+" ready", func() bool { st, _ := r.api(t, "GET", "/readyz", "", nil); return st == http.StatusOK })
	return r
}

// modeReplica starts one replica in mode: "redis" (with a private Redis)
// or "memory" (single-node, no REDIS_URL).
func modeReplica(t *testing.T, mode string, env map[string]string) *replica {
	t.Helper()
	if mode == "redis" {
		_, rs := cluster(t, 1, env)
		return rs[0]
	}
	return startReplica(t, "solo", env)
}

// startReplicaUnready is startReplica without waiting for readiness.
func startReplicaUnready(t *testing.T, name string, env map[string]string) *replica {
	t.Helper()
	vars := map[string]string{
		"HERALD_ADDR":          "127.0.0.1:0",
		"HERALD_API_KEYS":      testAPIKey,
		"HERALD_NODE":          name,
		"HERALD_DRAIN_TIMEOUT": "200ms",
		"HERALD_LOG_LEVEL":     "debug",
		// Tests open many sockets from one IP and user; the limit tests
		// set their own limits.
		"HERALD_CONNECT_LIMIT":      "100000",
		"HERALD_MAX_CONNS_PER_USER": "1000",
	}
	for k, v := range env {
		vars[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	r := &replica{t: t, name: name, cancel: cancel, done: make(chan error, 1), logs: &syncBuffer{}}
	go func() {
		err := run(ctx, nil, func(k string) string { return vars[k] }, pw, r.logs)
		pw.CloseWithError(fmt.Errorf("run returned: %v", err))
		r.done <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("replica %s did not start: %v\nlogs:\n%s", name, err, r.logs)
	}
	go io.Copy(io.Discard, pr)
	r.addr = strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
	t.Cleanup(func() { r.stop() })
	return r
}

// runBriefly runs a gateway with vars that should refuse to start, and
// returns run's error; one that starts anyway is stopped after a few
// seconds, and its nil error fails the caller's check.
func runBriefly(t *testing.T, vars map[string]string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return run(ctx, nil, func(k string) string { return vars[k] }, io.Discard, io.Discard)
}

// stop cancels the replica (as SIGTERM does) and waits for run to return.
func (r *replica) stop() error {
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(30 * time.Second):
		r.t.Errorf("replica %s did not stop\nlogs:\n%s", r.name, r.logs)
		return errors.New("timeout")
	}
}

// notable returns the replica's log lines above DEBUG, for failure messages.
func (r *replica) notable() string {
	var out []string
	for _, l := range strings.Split(r.logs.String(), "\n") {
		if l != "" && !strings.Contains(l, `"level":"DEBUG"`) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func (r *replica) url(path string) string { return "http://" + r.addr + path }
func (r *replica) wsURL(q string) string  { return "ws://" + r.addr + "/ws" + q }

// api makes a JSON request; body may be nil, a string or a value to encode.
func (r *replica) api(t *testing.T, method, path, key string, body any, hdr ...string) (int, map[string]any) {
	t.Helper()
	st, out, _ := r.apiHeader(t, method, path, key, body, hdr...)
	return st, out
}

// apiHeader is api that also returns the response's headers.
func (r *replica) apiHeader(t *testing.T, method, path, key string, body any, hdr ...string) (int, map[string]any, http.Header) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, r.url(path), rd)
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	json.Unmarshal(raw, &out)
	return resp.StatusCode, out, resp.Header
}

// newSession creates a session through the API and returns its id.
func (r *replica) newSession(t *testing.T, user string) string {
	t.Helper()
	st, body := r.api(t, "POST", "/api/sessions", testAPIKey, map[string]any{"userId": user, "email": user + "@x.test", "plan": "pro", "ttl": 600})
	if st != http.StatusCreated {
		t.Fatalf("create session: %d %v", st, body)
	}
	return body["sessionId"].(string)
}

// publish publishes through the HTTP API and returns the event id.
func (r *replica) publish(t *testing.T, channel, event string, data any) string {
	t.Helper()
	st, body := r.api(t, "POST", "/api/publish", testAPIKey, map[string]any{"channel": channel, "event": event, "data": data})
	if st != http.StatusAccepted {
		t.Fatalf("publish: %d %v", st, body)
	}
	return body["id"].(string)
}

// frame is a decoded server frame.
type frame map[string]any

func (f frame) str(k string) string { s, _ := f[k].(string); return s }

// client is a real WebSocket client.
type client struct {
	t      *testing.T
	c      *websocket.Conn
	frames chan frame
	closed chan struct{}
	err    error // read error once closed
	ref    int
}

// dial connects with an optional header; it fails the test unless the
// upgrade succeeds.
func dial(t *testing.T, url string, hdr http.Header) *client {
	t.Helper()
	c, resp, err := tryDial(url, hdr)
	if err != nil {
		st := 0
		if resp != nil {
			st = resp.StatusCode
		}
		t.Fatalf("dial %s: status %d: %v", url, st, err)
	}
	cl := &client{t: t, c: c, frames: make(chan frame, 4096), closed: make(chan struct{})}
	go cl.read()
	t.Cleanup(func() { c.CloseNow() })
	return cl
}

func tryDial(url string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: hdr})
}

// dialStatus attempts a connect that must be refused and returns the status.
func dialStatus(t *testing.T, url string, hdr http.Header) (int, http.Header) {
	t.Helper()
	c, resp, err := tryDial(url, hdr)
	if err == nil {
		c.CloseNow()
		t.Fatalf("dial %s: upgraded, want a refusal", url)
	}
	if resp == nil {
		t.Fatalf("dial %s: no HTTP answer: %v", url, err)
	}
	return resp.StatusCode, resp.Header
}

func bearerHeader(sid string) http.Header { return http.Header{"Authorization": {"Bearer " + sid}} }

func (cl *client) read() {
	defer close(cl.closed)
	for {
		_, b, err := cl.c.Read(context.Background())
		if err != nil {
			cl.err = err
			return
		}
		fs, err := splitFrames(b)
		if err != nil {
			cl.err = err
			return
		}
		for _, f := range fs {
			cl.frames <- f
		}
	}
}

// splitFrames decodes the frames of one WebSocket message: one, or
// several separated by "\n" (PROTOCOL §4).
func splitFrames(msg []byte) ([]frame, error) {
	var out []frame
	for _, b := range bytes.Split(msg, []byte("\n")) {
		var f frame
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("bad frame %q: %w", b, err)
		}
		out = append(out, f)
	}
	return out, nil
}

// next returns the next frame, failing the test after a generous wait.
func (cl *client) next() frame {
	cl.t.Helper()
	select {
	case f := <-cl.frames:
		return f
	case <-cl.closed:
		select {
		case f := <-cl.frames:
			return f
		default:
		}
		cl.t.Fatalf("connection closed while waiting for a frame: %v", cl.err)
	case <-time.After(10 * time.Second):
		cl.t.Fatal("no frame within 10s")
	}
	return nil
}

// nextOf skips frames until one of type typ arrives.
func (cl *client) nextOf(typ string) frame {
	cl.t.Helper()
	for {
		if f := cl.next(); f.str("type") == typ {
			return f
		}
	}
}

// send writes a client frame and returns its ref.
func (cl *client) send(typ, channel string) int {
	cl.t.Helper()
	cl.ref++
	b, _ := json.Marshal(map[string]any{"type": typ, "ref": cl.ref, "channel": channel})
	cl.sendRaw(b)
	return cl.ref
}

func (cl *client) sendRaw(b []byte) {
	cl.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cl.c.Write(ctx, websocket.MessageText, b); err != nil {
		cl.t.Fatalf("write: %v", err)
	}
}

// subscribe subscribes and returns the reply (subscribed or error).
func (cl *client) subscribe(channel string) frame {
	cl.t.Helper()
	ref := cl.send("subscribe", channel)
	for {
		f := cl.next()
		if r, ok := f["ref"].(float64); ok && int(r) == ref {
			return f
		}
	}
}

// closeCode waits for the server to close the socket and returns the code.
func (cl *client) closeCode() websocket.StatusCode {
	cl.t.Helper()
	select {
	case <-cl.closed:
	case <-time.After(15 * time.Second):
		cl.t.Fatal("socket not closed within 15s")
	}
	return websocket.CloseStatus(cl.err)
}

// noFrame asserts that no event frame is pending, after a round trip
// (ping/pong) proves the server handled everything sent before.
func (cl *client) noEventBeforePong() {
	cl.t.Helper()
	ref := cl.send("ping", "")
	for {
		f := cl.next()
		if f.str("type") == "pong" && int(f["ref"].(float64)) == ref {
			return
		}
		if f.str("type") == "event" {
			cl.t.Fatalf("unexpected event %v", f)
		}
	}
}

// metric reads one sample value from a replica's /metrics.
func (r *replica) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get(r.url("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return scanMetric(resp.Body, name)
}

// scanMetric returns the value of the sample name in the Prometheus text
// read from r, or -1.
func scanMetric(r io.Reader, name string) float64 {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return -1
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
