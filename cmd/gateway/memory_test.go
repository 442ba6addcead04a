package main

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// TestMemoryModeEndToEnd runs the single-node default: no REDIS_URL, dev on,
// demo page served, a dev login and a fake job completing live.
func TestMemoryModeEndToEnd(t *testing.T) {
	r := startReplica(t, "solo", nil)

	resp, err := http.Get(r.url("/"))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("demo page: %v %v", resp.Status, err)
	}
	resp.Body.Close()
	if st, _ := r.api(t, "GET", "/readyz", "", nil); st != http.StatusOK {
		t.Errorf("readyz %d, want 200", st)
	}

	// Log in as a person would: the cookie jar keeps the session cookie.
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar}
	// Before that, the page's session check answers 200 with no user (a
	// page without a session is not an error) and says sessions are in
	// memory.
	if got := devSession(t, hc, r); got != `{"memory":true,"userId":null}` {
		t.Errorf("GET /dev/session before login: %s", got)
	}
	resp, err = hc.Post(r.url("/dev/login"), "application/json", strings.NewReader(`{"userId":"alice"}`))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("dev login: %v %v", resp.Status, err)
	}
	resp.Body.Close()
	if got := devSession(t, hc, r); got != `{"memory":true,"userId":"alice"}` {
		t.Errorf("GET /dev/session after login: %s", got)
	}
	u, _ := url.Parse(r.url("/"))
	hdr := http.Header{}
	for _, ck := range jar.Cookies(u) {
		hdr.Add("Cookie", ck.String())
	}
	hdr.Set("Origin", "http://"+r.addr)
	cl := dial(t, r.wsURL(""), hdr)
	w := cl.nextOf("welcome")
	if w.str("user") != "alice" || w.str("node") != "solo" || w.str("conn") == "" {
		t.Errorf("welcome %v", w)
	}

	resp, err = hc.Post(r.url("/dev/jobs"), "application/json", strings.NewReader(`{"kind":"sepia"}`))
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("dev job: %v %v", resp.Status, err)
	}
	resp.Body.Close()
	ev := cl.nextOf("event")
	data, _ := ev["data"].(map[string]any)
	if ev.str("channel") != "user:alice" || ev.str("event") != "effect.complete" || data["kind"] != "sepia" {
		t.Errorf("completion %v", ev)
	}

	// The publish API works in memory too.
	id := r.publish(t, "user:alice", "note", map[string]any{"n": 1})
	if got := cl.nextOf("event"); got.str("id") != id {
		t.Errorf("event id %q, want %q", got.str("id"), id)
	}

	cl.c.Close(websocket.StatusNormalClosure, "")
	eventually(t, "connections back to zero", func() bool { return r.metric(t, "herald_connections") == 0 })
	if err := r.stop(); err != nil {
		t.Errorf("run returned %v, want nil", err)
	}
}

// devSession returns the body of GET /dev/session, which must answer 200.
func devSession(t *testing.T, hc *http.Client, r *replica) string {
	t.Helper()
	resp, err := hc.Get(r.url("/dev/session"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("GET /dev/session: %d %v, want 200 and no-store", resp.StatusCode, resp.Header)
	}
	return strings.TrimSpace(string(b))
}

func TestStaticFiles(t *testing.T) {
	r := startReplica(t, "solo", nil)
	get := func(path, etag string) *http.Response {
		req, _ := http.NewRequest("GET", r.url(path), nil)
		if etag != "" {
			req.Header.Set("If-None-Match", etag)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := get("/herald.js", "")
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "*" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") {
		t.Fatalf("/herald.js: %d %v", resp.StatusCode, resp.Header)
	}
	if again := get("/herald.js", resp.Header.Get("ETag")); again.StatusCode != http.StatusNotModified {
		t.Errorf("revalidation: %d, want 304", again.StatusCode)
	}
	if resp := get("/herald.d.ts", ""); !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/typescript") {
		t.Errorf("/herald.d.ts Content-Type %q", resp.Header.Get("Content-Type"))
	}
	if resp := get("/", ""); resp.StatusCode != 200 || resp.Header.Get("ETag") == "" || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("/: %d %v", resp.StatusCode, resp.Header)
	}
}
