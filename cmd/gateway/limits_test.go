package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/heraldgw/herald/internal/redistest"
)

// dialFrom dials url from a given loopback source address, with headers.
func dialFrom(ctx context.Context, src net.IP, url string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	return websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: hc, HTTPHeader: hdr})
}

// TestConnectLimitExactAcrossReplicas: three gateway processes share one
// connect limit per client IP: 300 concurrent attempts from one IP with a
// limit of 100 admit exactly 100, twenty times over, whatever
// X-Forwarded-For the (untrusted) client sends.
func TestConnectLimitExactAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL(), "HERALD_CONNECT_LIMIT": "100", "HERALD_CONNECT_WINDOW": "1h"}
	reps := []*process{startProcess(t, "a", env), startProcess(t, "b", env), startProcess(t, "c", env)}
	sid := (&replica{t: t, addr: reps[0].addr}).newSession(t, "u")

	for round := range 20 {
		src := net.IPv4(127, 0, 1, byte(10+round)) // a fresh client IP per round
		var admitted, refused atomic.Int64
		var wg sync.WaitGroup
		var mu sync.Mutex
		var conns []*websocket.Conn
		var sample http.Header
		for i := range 300 {
			wg.Go(func() {
				hdr := bearerHeader(sid)
				hdr.Set("X-Forwarded-For", fmt.Sprintf("10.%d.%d.%d", round, i/250, i%250)) // forged
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				c, resp, err := dialFrom(ctx, src, "ws://"+reps[i%3].addr+"/ws", hdr)
				switch {
				case err == nil:
					admitted.Add(1)
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
					refused.Add(1)
					mu.Lock()
					sample = resp.Header
					mu.Unlock()
				default:
					t.Errorf("round %d: attempt %d: %v", round, i, err)
				}
			})
		}
		wg.Wait()
		for _, c := range conns {
			c.CloseNow()
		}
		if admitted.Load() != 100 || refused.Load() != 200 {
			t.Fatalf("round %d: %d admitted, %d refused; want exactly 100 and 200", round, admitted.Load(), refused.Load())
		}
		if round == 0 {
			for _, h := range []string{"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} {
				if sample.Get(h) == "" {
					t.Errorf("429 lacks %s", h)
				}
			}
			if sample.Get("X-RateLimit-Limit") != "100" || sample.Get("X-RateLimit-Remaining") != "0" {
				t.Errorf("429 headers: limit %q remaining %q, want 100 and 0", sample.Get("X-RateLimit-Limit"), sample.Get("X-RateLimit-Remaining"))
			}
		}
	}
}

// TestUserCapExactAcrossReplicas: at most N sockets per user across all
// replicas, exactly, under concurrency; a closed socket frees its slot.
func TestUserCapExactAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL(), "HERALD_MAX_CONNS_PER_USER": "3"}
	reps := []*process{startProcess(t, "a", env), startProcess(t, "b", env)}
	r0 := &replica{t: t, addr: reps[0].addr}
	for round := range 5 {
		sid := r0.newSession(t, fmt.Sprintf("capped-%d", round))
		var mu sync.Mutex
		var conns []*websocket.Conn
		var refused int
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				c, resp, err := tryDial("ws://"+reps[i%2].addr+"/ws", bearerHeader(sid))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					conns = append(conns, c)
				case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
					refused++
				default:
					t.Errorf("attempt %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		if len(conns) != 3 || refused != 17 {
			t.Fatalf("round %d: %d admitted, %d refused; want exactly 3 and 17", round, len(conns), refused)
		}
		conns[0].Close(websocket.StatusNormalClosure, "")
		eventually(t, "the slot to be free again", func() bool {
			c, _, err := tryDial("ws://"+reps[1].addr+"/ws", bearerHeader(sid))
			if err != nil {
				return false
			}
			conns[0] = c
			return true
		})
		for _, c := range conns {
			c.CloseNow()
		}
	}
}

func TestClientMessageRate(t *testing.T) {
	_, rs := cluster(t, 1, map[string]string{"HERALD_CLIENT_MSG_RATE": "1", "HERALD_CLIENT_MSG_BURST": "5"})
	r := rs[0]
	cl := dial(t, r.wsURL(""), bearerHeader(r.newSession(t, "u")))
	cl.nextOf("welcome")
	for range 5 {
		cl.send("ping", "")
		cl.nextOf("pong")
	}
	ref := cl.send("ping", "")
	if f := cl.next(); f.str("type") != "error" || f.str("code") != "rate_limited" || int(f["ref"].(float64)) != ref {
		t.Fatalf("over the rate: %v, want error rate_limited with ref %d", f, ref)
	}
	for range 15 { // a client that keeps going
		if err := cl.c.Write(context.Background(), websocket.MessageText, []byte(`{"type":"ping"}`)); err != nil {
			break
		}
	}
	if code := cl.closeCode(); code != 4008 {
		t.Errorf("close %d, want 4008", code)
	}
}

func TestPublishRatePerAPIKey(t *testing.T) {
	_, rs := cluster(t, 1, map[string]string{"HERALD_PUBLISH_RATE": "0.001", "HERALD_PUBLISH_BURST": "3"})
	r := rs[0]
	body := map[string]any{"channel": "user:1", "event": "e"}
	for i := range 3 {
		if st, b := r.api(t, "POST", "/api/publish", testAPIKey, body); st != 202 {
			t.Fatalf("publish %d: %d %v", i, st, b)
		}
	}
	req, _ := http.NewRequest("POST", r.url("/api/publish"), strings.NewReader(`{"channel":"user:1","event":"e"}`))
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || resp.Header.Get("X-RateLimit-Limit") != "3" {
		t.Errorf("4th publish: %d, headers %v; want 429 with the rate-limit headers", resp.StatusCode, resp.Header)
	}
	// Wrong keys are refused before the limiter, so they cannot drain it.
	if st, _ := r.api(t, "POST", "/api/publish", "wrong-key-0123456789", body); st != 401 {
		t.Errorf("wrong key: %d, want 401", st)
	}
}

func TestTrustedProxyXFF(t *testing.T) {
	_, rs := cluster(t, 1, map[string]string{"HERALD_CONNECT_LIMIT": "1", "HERALD_CONNECT_WINDOW": "1h", "HERALD_TRUSTED_PROXIES": "127.0.0.1/32"})
	r := rs[0]
	sid := r.newSession(t, "u")
	for _, ip := range []string{"203.0.113.1", "203.0.113.2"} { // two clients behind the proxy
		hdr := bearerHeader(sid)
		hdr.Set("X-Forwarded-For", ip)
		c := dial(t, r.wsURL(""), hdr)
		c.nextOf("welcome")
	}
	hdr := bearerHeader(sid)
	hdr.Set("X-Forwarded-For", "203.0.113.1")
	if st, _ := dialStatus(t, r.wsURL(""), hdr); st != 429 {
		t.Errorf("second connect of 203.0.113.1: %d, want 429", st)
	}
}

// TestConnectLimitAnswersBeforeCredentials: the session is looked up while
// the connect limit is checked, but the answers keep their order: a client
// IP over its limit gets 429 whatever its credentials, and a ticket
// presented then is not used up; under the limit, a bad session gets 401.
func TestConnectLimitAnswersBeforeCredentials(t *testing.T) {
	_, rs := cluster(t, 1, map[string]string{"HERALD_CONNECT_LIMIT": "1", "HERALD_CONNECT_WINDOW": "1h", "HERALD_TRUSTED_PROXIES": "127.0.0.1/32"})
	r := rs[0]
	sid := r.newSession(t, "u")
	from := func(ip string, hdr http.Header) http.Header {
		hdr.Set("X-Forwarded-For", ip)
		return hdr
	}
	dial(t, r.wsURL(""), from("203.0.113.1", bearerHeader(sid))).nextOf("welcome")
	if st, _ := dialStatus(t, r.wsURL(""), from("203.0.113.1", bearerHeader("nope"))); st != http.StatusTooManyRequests {
		t.Errorf("unknown session from an IP over its limit: %d, want 429", st)
	}
	st, out := r.api(t, "POST", "/api/tickets", sid, nil)
	ticket, _ := out["ticket"].(string)
	if st != http.StatusCreated || ticket == "" {
		t.Fatalf("ticket: %d %v", st, out)
	}
	if st, _ := dialStatus(t, r.wsURL("?ticket="+ticket), from("203.0.113.1", http.Header{})); st != http.StatusTooManyRequests {
		t.Errorf("ticket from an IP over its limit: %d, want 429", st)
	}
	dial(t, r.wsURL("?ticket="+ticket), from("203.0.113.2", http.Header{})).nextOf("welcome") // the ticket was kept
	if st, _ := dialStatus(t, r.wsURL(""), from("203.0.113.3", bearerHeader("nope"))); st != http.StatusUnauthorized {
		t.Errorf("unknown session under the limit: %d, want 401", st)
	}
}

// TestMaxConnsAndFileExhaustion runs a gateway with a small open-file
// limit: it refuses sockets with 503 before running out, and raw
// connections cannot exhaust its descriptors either: beyond
// HERALD_MAX_HTTP_CONNS the stalest are closed, so open sockets keep
// working and the server keeps serving.
func TestMaxConnsAndFileExhaustion(t *testing.T) {
	srv := redistest.Start(t)
	bin, err := gatewayBin()
	if err != nil {
		t.Fatal(err)
	}
	p := startProcessCmd(t, "small", exec.Command("sh", "-c", "ulimit -n 256 && exec "+bin), map[string]string{"REDIS_URL": srv.URL()})
	r := &replica{t: t, addr: p.addr}
	sid := r.newSession(t, "u")
	maxConns := 256*9/10 - 64 // config.defaultMaxConns: 90 % of the limit, less 64
	var open []*client
	for range maxConns {
		c := dial(t, r.wsURL(""), bearerHeader(sid))
		c.nextOf("welcome")
		open = append(open, c)
	}
	if st, h := dialStatus(t, r.wsURL(""), bearerHeader(sid)); st != 503 || h.Get("Retry-After") == "" {
		t.Fatalf("socket %d: %d, want 503 with Retry-After", maxConns+1, st)
	}
	// Try to exhaust the remaining descriptors with raw TCP connections.
	var raw []net.Conn
	for range 200 {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			break
		}
		raw = append(raw, c)
	}
	for _, c := range open[:5] {
		c.send("ping", "")
		c.nextOf("pong")
	}
	if st, _ := r.api(t, "GET", "/healthz", "", nil); st != 200 {
		t.Errorf("healthz with %d raw connections open: %d, want 200", len(raw), st)
	}
	if n, httpCap := r.metric(t, "herald_http_evictions_total"), 256/10; n < float64(len(raw)-httpCap) {
		t.Errorf("%v connections evicted, want at least %d of the %d raw ones", n, len(raw)-httpCap, len(raw))
	}
	for _, c := range raw {
		c.Close()
	}
	if strings.Contains(p.logs.String(), "too many open files") {
		t.Errorf("the gateway ran out of descriptors:\n%s", p.logs)
	}
}
