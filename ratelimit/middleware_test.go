package ratelimit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/heraldgw/herald/ratelimit"
)

// serve runs one request through an echo app whose /x route is limited by
// mw and answers 200 "ok".
func serve(t *testing.T, mw echo.MiddlewareFunc, setup func(*http.Request)) *httptest.ResponseRecorder {
	t.Helper()
	e := echo.New()
	e.GET("/x", func(c echo.Context) error { return c.String(http.StatusOK, "ok") }, mw)
	req := httptest.NewRequest(http.MethodGet, "/x", nil)
	req.RemoteAddr = "192.0.2.7:5555"
	if setup != nil {
		setup(req)
	}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	return rec
}

func headers(rec *httptest.ResponseRecorder) map[string]string {
	m := map[string]string{}
	for _, h := range []string{"X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset", "Retry-After"} {
		m[h] = rec.Header().Get(h)
	}
	return m
}

func TestMiddleware(t *testing.T) {
	clk := newClock()
	l, err := ratelimit.NewMemorySlidingWindow(ratelimit.SlidingWindowConfig{Limit: 2, Window: 10 * time.Second}, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	mw := ratelimit.Middleware(l, ratelimit.ClientIP)

	tests := []struct {
		at     int64
		status int
		want   map[string]string
	}{
		{0, 200, map[string]string{"X-Ratelimit-Limit": "2", "X-Ratelimit-Remaining": "1", "X-Ratelimit-Reset": "10", "Retry-After": ""}},
		{1, 200, map[string]string{"X-Ratelimit-Limit": "2", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": "10", "Retry-After": ""}},
		// 8.5 s left, rounded up.
		{1500, 429, map[string]string{"X-Ratelimit-Limit": "2", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": "9", "Retry-After": "9"}},
		// 1 ms left still says 1 s.
		{9999, 429, map[string]string{"X-Ratelimit-Limit": "2", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": "1", "Retry-After": "1"}},
		{10_000, 200, map[string]string{"X-Ratelimit-Limit": "2", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": "1", "Retry-After": ""}},
	}
	for i, tt := range tests {
		clk.Set(tt.at)
		rec := serve(t, mw, nil)
		if rec.Code != tt.status {
			t.Fatalf("request %d: status %d, want %d", i, rec.Code, tt.status)
		}
		if got := headers(rec); !equalMaps(got, tt.want) {
			t.Errorf("request %d: headers %v, want %v", i, got, tt.want)
		}
		if tt.status == 200 {
			continue
		}
		var body struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("request %d: body %q: %v", i, rec.Body, err)
		}
		if body.Error.Code != "rate_limited" || body.Error.Message == "" {
			t.Errorf("request %d: body %s, want code rate_limited and a message", i, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("request %d: Content-Type %q", i, ct)
		}
	}

	// Another client IP has its own window.
	if rec := serve(t, mw, func(r *http.Request) { r.RemoteAddr = "192.0.2.8:1" }); rec.Code != 200 {
		t.Errorf("other client: status %d, want 200", rec.Code)
	}
}

// TestClientIPIgnoresForwardedHeaders: without an IPExtractor configured,
// a client cannot escape its limit by sending X-Forwarded-For.
func TestClientIPIgnoresForwardedHeaders(t *testing.T) {
	l, _ := ratelimit.NewMemorySlidingWindow(ratelimit.SlidingWindowConfig{Limit: 1, Window: time.Minute}, nil)
	mw := ratelimit.Middleware(l, ratelimit.ClientIP)
	for i, xff := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		rec := serve(t, mw, func(r *http.Request) {
			r.Header.Set("X-Forwarded-For", xff)
			r.Header.Set("X-Real-Ip", xff)
		})
		if want := map[bool]int{true: 200, false: 429}[i == 0]; rec.Code != want {
			t.Fatalf("request %d with forged X-Forwarded-For: status %d, want %d", i, rec.Code, want)
		}
	}
}

// failing is a limiter whose backend is down.
type failing struct{ err error }

func (f failing) Allow(context.Context, string) (ratelimit.Result, error) {
	return ratelimit.Result{}, f.err
}

func TestMiddlewareLimiterDown(t *testing.T) {
	const secret = "sk_live_0123456789abcdef"
	down := failing{errors.New("dial tcp 127.0.0.1:6379: connection refused")}
	byAPIKey := func(c echo.Context) string { return c.Request().Header.Get("Authorization") }
	withKey := func(r *http.Request) { r.Header.Set("Authorization", secret) }

	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	rec := serve(t, ratelimit.Middleware(down, byAPIKey, ratelimit.WithLogger(log)), withKey)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("fail closed: status %d, Retry-After %q; want 503, 1", rec.Code, rec.Header().Get("Retry-After"))
	}
	if !strings.Contains(rec.Body.String(), `"code":"unavailable"`) {
		t.Errorf("fail closed: body %s", rec.Body)
	}
	if rec.Header().Get("X-Ratelimit-Limit") != "" {
		t.Error("fail closed: X-RateLimit-Limit set without a decision")
	}

	rec = serve(t, ratelimit.Middleware(down, byAPIKey, ratelimit.FailOpen(), ratelimit.WithLogger(log)), withKey)
	if rec.Code != http.StatusOK || rec.Body.String() != "ok" {
		t.Fatalf("fail open: status %d body %q, want 200 ok", rec.Code, rec.Body)
	}

	if !strings.Contains(logs.String(), "rate limiter failed") {
		t.Errorf("failure not logged: %s", logs.String())
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("the key reached the log: %s", logs.String())
	}
}

func TestMiddlewareLogsAtMostOncePerSecond(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	mw := ratelimit.Middleware(failing{errors.New("down")}, ratelimit.ClientIP, ratelimit.WithLogger(log))
	for range 50 {
		serve(t, mw, nil)
	}
	// 50 in-process requests take far less than a second; allow for one
	// second boundary crossed on a very slow machine.
	if n := strings.Count(logs.String(), "rate limiter failed"); n < 1 || n > 2 {
		t.Errorf("50 quick failures logged %d lines, want 1 (2 at most)", n)
	}
	if !strings.Contains(logs.String(), "suppressed=0") {
		t.Errorf("first line should report 0 suppressed: %s", logs.String())
	}
}

func TestMiddlewareSkipperAndHashedKey(t *testing.T) {
	var seen []string
	rec := recorder{&seen}
	mw := ratelimit.Middleware(rec, ratelimit.Hashed(func(c echo.Context) string { return c.Request().Header.Get("X-Api-Key") }),
		ratelimit.WithSkipper(func(c echo.Context) bool { return c.Request().Header.Get("X-Skip") != "" }))
	serve(t, mw, func(r *http.Request) { r.Header.Set("X-Api-Key", "secret-key") })
	serve(t, mw, func(r *http.Request) { r.Header.Set("X-Skip", "1") })
	if len(seen) != 1 || seen[0] != ratelimit.HashKey("secret-key") {
		t.Fatalf("limiter saw keys %q, want one hashed key", seen)
	}
	if h := ratelimit.HashKey("secret-key"); len(h) != 32 || strings.Contains(h, "secret") || h == ratelimit.HashKey("secret-kez") {
		t.Errorf("HashKey: %q", h)
	}
}

type recorder struct{ keys *[]string }

func (r recorder) Allow(_ context.Context, key string) (ratelimit.Result, error) {
	*r.keys = append(*r.keys, key)
	return ratelimit.Result{Allowed: true, Limit: 1, Remaining: 1}, nil
}

func TestSetHeaders(t *testing.T) {
	tests := []struct {
		r    ratelimit.Result
		want map[string]string
	}{
		{ratelimit.Result{Allowed: true, Limit: 30, Remaining: 29, Reset: 10 * time.Second},
			map[string]string{"X-Ratelimit-Limit": "30", "X-Ratelimit-Remaining": "29", "X-Ratelimit-Reset": "10", "Retry-After": ""}},
		{ratelimit.Result{Allowed: true, Limit: 20, Remaining: 20},
			map[string]string{"X-Ratelimit-Limit": "20", "X-Ratelimit-Remaining": "20", "X-Ratelimit-Reset": "0", "Retry-After": ""}},
		{ratelimit.Result{Allowed: false, Limit: 30, Reset: 1001 * time.Millisecond, RetryAfter: 1001 * time.Millisecond},
			map[string]string{"X-Ratelimit-Limit": "30", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": "2", "Retry-After": "2"}},
		{ratelimit.Result{Allowed: false, Limit: 3, Reset: time.Millisecond, RetryAfter: time.Millisecond},
			map[string]string{"X-Ratelimit-Limit": "3", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": "1", "Retry-After": "1"}},
		{ratelimit.Result{Allowed: false, Limit: 3},
			map[string]string{"X-Ratelimit-Limit": "3", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": "0", "Retry-After": "1"}},
	}
	for i, tt := range tests {
		rec := httptest.NewRecorder()
		ratelimit.SetHeaders(rec.Header(), tt.r)
		if got := headers(rec); !equalMaps(got, tt.want) {
			t.Errorf("case %d: %v, want %v", i, got, tt.want)
		}
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
