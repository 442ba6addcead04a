package gateway

// Fast in-package tests of the delivery edges on the in-memory twins: a
// real Server behind httptest, real WebSocket clients, the memory broker
// and session store. The same paths run end to end against Redis in
// cmd/gateway.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/config"
	"github.com/heraldgw/herald/internal/hub"
	"github.com/heraldgw/herald/internal/metrics"
	"github.com/heraldgw/herald/internal/session"
	"github.com/heraldgw/herald/ratelimit"
)

const (
	testKey  = "gateway-test-key-0123456789"
	otherKey = "gateway-other-key-0123456789"
)

// testServer is a Server on the memory twins, served on loopback.
type testServer struct {
	*Server
	url      string
	broker   *broker.Memory
	source   *gatedSource // the hub's: the broker, whose joins a test may hold
	sessions *session.Memory
}

// gatedSource is the hub's source in tests: the memory broker, whose
// Subscribe first waits for a verdict on gate while one is set (nil: go
// on; errJoinPanics: panic; another error: fail with it).
type gatedSource struct {
	*broker.Memory
	gate atomic.Pointer[chan error]
}

// errJoinPanics, sent on a gatedSource's gate, makes the join panic.
var errJoinPanics = errors.New("test: this join panics")

func (g *gatedSource) Subscribe(ctx context.Context, channels ...string) error {
	if gate := g.gate.Load(); gate != nil {
		select {
		case err := <-*gate:
			if err == errJoinPanics {
				panic(err)
			}
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.Memory.Subscribe(ctx, channels...)
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	return newTestServerWith(t, nil, hub.Config{})
}

// newTestServerWith is newTestServer with more settings (env) and a hub
// tuned by hcfg.
func newTestServerWith(t testing.TB, more map[string]string, hcfg hub.Config) *testServer {
	t.Helper()
	return newTestServerOn(t, more, hcfg, nil)
}

// newTestServerOn is newTestServerWith counting sockets per user in slots
// (nil: the memory twin).
func newTestServerOn(t testing.TB, more map[string]string, hcfg hub.Config, slots Slots) *testServer {
	t.Helper()
	env := map[string]string{"HERALD_API_KEYS": testKey + "," + otherKey, "HERALD_NODE": "t", "HERALD_DRAIN_TIMEOUT": "50ms"}
	for k, v := range more {
		env[k] = v
	}
	cfg, err := config.Load(nil, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	var h *hub.Hub
	var srv *Server
	m := metrics.New(reg, func() float64 { return 0 }, func() float64 { return 0 })
	b := broker.NewMemory(func(ch, id, owner string, f []byte) { h.Broadcast(ch, id, owner, f) }, broker.MemoryConfig{})
	hcfg.OnEvict = func(c *hub.Conn, ch string) { srv.Evicted(c, ch) }
	src := &gatedSource{Memory: b}
	h = hub.New(hcfg, src, log)
	window := ratelimit.SlidingWindowConfig{Limit: 1000, Window: time.Second}
	if _, ok := more["HERALD_CONNECT_LIMIT"]; ok {
		window = ratelimit.SlidingWindowConfig{Limit: cfg.ConnectLimit, Window: cfg.ConnectWindow}
	}
	connects, _ := ratelimit.NewMemorySlidingWindow(window, nil)
	publishes, _ := ratelimit.NewMemoryTokenBucket(ratelimit.TokenBucketConfig{Rate: 1000, Burst: 1000}, nil)
	if slots == nil {
		slots, _ = ratelimit.NewMemoryConcurrency(ratelimit.ConcurrencyConfig{Replica: "t"})
	}
	sessions := session.NewMemory(nil)
	guards := metrics.NewGuards(reg, func() float64 { return 0 })
	srv = New(Deps{
		Config: cfg, Hub: h, Broker: b, Sessions: sessions, Metrics: m, Guards: guards, Gatherer: reg, Log: log,
		ConnectLimiter: connects, PublishLimiter: publishes, Slots: slots,
	})
	hs := httptest.NewServer(srv.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() {
		hs.Close()
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		srv.Drain(dctx)
		dcancel()
		cancel()
		<-done
		h.Close()
	})
	ts := &testServer{Server: srv, url: hs.URL, broker: b, source: src, sessions: sessions}
	deadline := time.Now().Add(5 * time.Second)
	for !srv.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("server not ready")
		}
		time.Sleep(time.Millisecond)
	}
	return ts
}

// wsClient is a WebSocket client reading decoded frames.
type wsClient struct {
	t      *testing.T
	c      *websocket.Conn
	frames chan map[string]any
	err    error // why the socket ended; set before frames is closed
}

func (ts *testServer) dial(t *testing.T, user, query string) *wsClient {
	t.Helper()
	sess, err := ts.sessions.Create(context.Background(), user, "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(ts.url, "http")+"/ws"+query,
		&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + sess.ID}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	cl := &wsClient{t: t, c: c, frames: make(chan map[string]any, 256)}
	go func() {
		defer close(cl.frames)
		for {
			_, b, err := c.Read(context.Background())
			if err != nil {
				cl.err = err
				return
			}
			for _, line := range bytes.Split(b, []byte("\n")) { // several frames per message
				var f map[string]any
				if json.Unmarshal(line, &f) != nil {
					f = map[string]any{"type": "unparsable", "raw": string(line)}
				}
				cl.frames <- f
			}
		}
	}()
	return cl
}

func (cl *wsClient) next() map[string]any {
	cl.t.Helper()
	select {
	case f, ok := <-cl.frames:
		if !ok {
			cl.t.Fatal("socket closed")
		}
		return f
	case <-time.After(5 * time.Second):
		cl.t.Fatal("no frame within 5s")
		return nil
	}
}

func (cl *wsClient) send(format string, args ...any) {
	cl.t.Helper()
	if err := cl.c.Write(context.Background(), websocket.MessageText, fmt.Appendf(nil, format, args...)); err != nil {
		cl.t.Fatal(err)
	}
}

// quiet proves no frame is pending: a ping's pong comes first.
func (cl *wsClient) quiet() {
	cl.t.Helper()
	cl.send(`{"type":"ping","ref":999}`)
	if f := cl.next(); f["type"] != "pong" {
		cl.t.Fatalf("got %v, want nothing before the pong", f)
	}
}

func (ts *testServer) publish(t *testing.T, apiKey, idem, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", ts.url+"/api/publish", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")
	if idem != "" {
		req.Header.Set("Idempotency-Key", idem)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestQuietChannelResumesRecovered(t *testing.T) {
	ts := newTestServer(t)
	effect := "effect:" + uuid.NewString()
	cl := ts.dial(t, "q", "")
	w := cl.next()
	cl.send(`{"type":"subscribe","ref":1,"channel":%q}`, effect)
	sub := cl.next()
	if w["type"] != "welcome" || w["last"] == nil || sub["type"] != "subscribed" || sub["last"] == nil {
		t.Fatalf("welcome %v, subscribed %v: want both with last", w, sub)
	}
	cl = ts.dial(t, "q", "?since="+w["last"].(string))
	if w := cl.next(); w["recovered"] != true {
		t.Fatalf("resume of a quiet personal channel: %v, want recovered:true", w)
	}
	cl.send(`{"type":"subscribe","ref":2,"channel":%q,"since":%q}`, effect, sub["last"])
	if f := cl.next(); f["type"] != "subscribed" || f["recovered"] != true {
		t.Fatalf("resume of an effect with no event yet: %v, want recovered:true", f)
	}
	cl.quiet()
}

func TestOwnedEffectReachesItsOwnerOnly(t *testing.T) {
	ts := newTestServer(t)
	effect := uuid.NewString()
	alice, mallory := ts.dial(t, "alice", ""), ts.dial(t, "mallory", "")
	alice.next()
	mallory.next()
	for _, cl := range []*wsClient{alice, mallory} {
		cl.send(`{"type":"subscribe","ref":1,"channel":"effect:%s"}`, effect)
		if f := cl.next(); f["type"] != "subscribed" {
			t.Fatalf("subscribe of an unowned UUID: %v", f)
		}
	}
	st, _ := ts.publish(t, testKey, "", fmt.Sprintf(`{"channel":"effect:%s","event":"effect.complete","data":{"userId":"alice"}}`, effect))
	if st != http.StatusAccepted {
		t.Fatalf("publish: %d", st)
	}
	if f := alice.next(); f["type"] != "event" {
		t.Fatalf("owner got %v", f)
	}
	if f := mallory.next(); f["type"] != "unsubscribed" || f["reason"] != "forbidden" {
		t.Fatalf("other user got %v, want unsubscribed for forbidden", f)
	}
	mallory.quiet()
	mallory.send(`{"type":"subscribe","ref":2,"channel":"effect:%s"}`, effect)
	owned := mallory.next()
	mallory.send(`{"type":"subscribe","ref":3,"channel":"effect:not-a-uuid"}`)
	unknown := mallory.next()
	if owned["code"] != "forbidden" || owned["message"] != unknown["message"] || owned["code"] != unknown["code"] {
		t.Fatalf("refusals %v and %v differ: they must not tell who owns an id", owned, unknown)
	}
}

func TestGapNoticeReachesSubscribers(t *testing.T) {
	ts := newTestServer(t)
	cl := ts.dial(t, "g", "")
	cl.next()
	ts.Gap("user:g")
	if f := cl.next(); f["type"] != "gap" || f["channel"] != "user:g" {
		t.Fatalf("got %v, want a gap notice for user:g", f)
	}
}

func TestPublishRefusals(t *testing.T) {
	ts := newTestServer(t)
	tests := []struct {
		name, key, idem, body string
		status                int
		field                 string
	}{
		{"invalid UTF-8 in data", testKey, "", "{\"channel\":\"public:x\",\"event\":\"e\",\"data\":\"\xff\"}", 400, "data"},
		{"idempotency key with a space", testKey, "a b", `{"channel":"public:x","event":"e"}`, 400, "Idempotency-Key"},
		{"a key of one API key", testKey, "job-1", `{"channel":"public:x","event":"e"}`, 202, ""},
		{"the same key of another API key, other channel", otherKey, "job-1", `{"channel":"public:y","event":"e"}`, 202, ""},
		{"the same key again for another channel", testKey, "job-1", `{"channel":"public:z","event":"e"}`, 422, "Idempotency-Key"},
	}
	for _, tt := range tests {
		st, body := ts.publish(t, tt.key, tt.idem, tt.body)
		e, _ := body["error"].(map[string]any)
		if st != tt.status || (tt.field != "" && e["field"] != tt.field) {
			t.Errorf("%s: %d %v, want %d naming %q", tt.name, st, body, tt.status, tt.field)
		}
	}
}
