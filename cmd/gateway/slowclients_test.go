package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/redistest"
)

// slowBody connects to addr and sends the headers of a POST to path that
// announces a 60,000-byte body, then one byte of it every 100 ms, until the
// gateway closes the connection (a write fails) or ctx is done. It reports
// whether the gateway closed it.
func slowBody(ctx context.Context, addr, path string, hdr string, sent func()) bool {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		sent()
		return true // refused: not held either
	}
	defer c.Close()
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%sContent-Length: 60000\r\n\r\n{", path, addr, hdr)
	_, err = c.Write([]byte(head))
	sent()
	if err != nil {
		return true
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte(" ")); err != nil {
			return true
		}
	}
}

// TestSlowClientsCannotExhaustTheGateway runs the gateway binary with 256
// open files and sends it 1,000 clients that trickle request bodies to
// /api/tickets and /api/publish, with and without an API key. The
// connections that are not WebSockets are capped (10 % of the open-file
// limit), so the gateway keeps descriptors for the rest: health checks,
// publishes and WebSocket connects keep working while the crowd is there,
// and every slow body is cut off at HERALD_BODY_TIMEOUT, so no client is
// held for ever.
func TestSlowClientsCannotExhaustTheGateway(t *testing.T) {
	srv := redistest.Start(t)
	bin, err := gatewayBin()
	if err != nil {
		t.Fatal(err)
	}
	p := startProcessCmd(t, "slow", exec.Command("sh", "-c", "ulimit -n 256 && exec "+bin),
		map[string]string{"REDIS_URL": srv.URL(), "HERALD_BODY_TIMEOUT": "2s"})
	r := &replica{t: t, addr: p.addr}
	sid := r.newSession(t, "u")
	early := dial(t, r.wsURL(""), bearerHeader(sid))
	early.nextOf("welcome")

	const crowd = 1000
	httpCap := 256 / 10 // config.defaultMaxHTTPConns
	targets := []struct{ path, hdr string }{
		{"/api/tickets", "Authorization: Bearer " + sid + "\r\n"},
		{"/api/publish", "Authorization: Bearer " + testAPIKey + "\r\n"},
		{"/api/publish", ""},
		{"/api/publish/batch", "Authorization: Bearer wrong-key-0123456789\r\n"},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var started, ended sync.WaitGroup
	var cut atomic.Int64
	for i := range crowd {
		started.Add(1)
		ended.Add(1)
		go func() {
			defer ended.Done()
			tt := targets[i%len(targets)]
			if slowBody(ctx, p.addr, tt.path, tt.hdr, started.Done) {
				cut.Add(1)
			}
		}()
	}
	started.Wait()
	// Once the crowd has been taken in, all but the newest httpCap were
	// closed to make room (the gateway answers nothing while it is out of
	// descriptors, so this never holds without the cap).
	eventually(t, "the crowd to be taken in", func() bool {
		return r.metricWithin(t, "herald_http_evictions_total", 2*time.Second) >= float64(crowd-httpCap)
	})

	// While the newest slow clients still trickle: health, sockets, publishes.
	if st, _ := r.api(t, "GET", "/healthz", "", nil); st != http.StatusOK {
		t.Errorf("healthz %d, want 200", st)
	}
	late := dial(t, r.wsURL(""), bearerHeader(sid))
	late.nextOf("welcome")
	id := r.publish(t, "user:u", "still-here", nil)
	for _, c := range []*client{early, late} {
		if ev := c.nextOf("event"); ev.str("id") != id {
			t.Errorf("event %v, want id %s", ev, id)
		}
	}

	// Every slow body is cut off: none is held past the body timeout.
	done := make(chan struct{})
	go func() { ended.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%d of %d slow clients still connected after 30 s; HERALD_BODY_TIMEOUT is 2 s", crowd-int(cut.Load()), crowd)
	}
	if st, _ := r.api(t, "GET", "/healthz", "", nil); st != http.StatusOK {
		t.Errorf("healthz after the crowd: %d, want 200", st)
	}
	if logs := p.logs.String(); strings.Contains(logs, "too many open files") {
		t.Errorf("the gateway ran out of descriptors:\n%s", logs)
	}
}

// metricWithin is metric with a timeout, for a gateway that may not answer:
// it returns -1 then.
func (r *replica) metricWithin(t *testing.T, name string, d time.Duration) float64 {
	t.Helper()
	c := &http.Client{Timeout: d}
	resp, err := c.Get(r.url("/metrics"))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	return scanMetric(resp.Body, name)
}
