package main

import (
	"net/http"
	"testing"
)

// TestTicketsCheckOriginAndAreLimitedPerSession: a ticket asked for with
// the session cookie is refused to a page of a foreign origin, as /ws
// refuses it; and each session gets at most HERALD_CONNECT_LIMIT tickets
// per window, whichever credential asks.
func TestTicketsCheckOriginAndAreLimitedPerSession(t *testing.T) {
	_, rs := cluster(t, 2, map[string]string{
		"HERALD_ALLOWED_ORIGINS": "https://app.example.com", "HERALD_CONNECT_LIMIT": "4", "HERALD_CONNECT_WINDOW": "1h"})
	r := rs[0]
	a, b := r.newSession(t, "a"), r.newSession(t, "b")
	cookie := func(sid string) string { return "sid=" + sid }
	tests := []struct {
		name string
		key  string // bearer
		hdr  []string
		want int
	}{
		{"cookie from an allowed page", "", []string{"Cookie", cookie(a), "Origin", "https://app.example.com"}, 201},
		{"cookie from another site", "", []string{"Cookie", cookie(a), "Origin", "https://evil.test"}, 403},
		{"cookie from a sandboxed frame", "", []string{"Cookie", cookie(a), "Origin", "null"}, 403},
		{"cookie without Origin", "", []string{"Cookie", cookie(a)}, 201},
		{"bearer from anywhere", a, []string{"Origin", "https://evil.test"}, 201},
		{"on the other replica", a, nil, 201},
		{"the fifth for this session", a, nil, 429},
		{"another session from the same client", b, nil, 201},
		{"unknown session", "nope", nil, 401},
	}
	for i, tt := range tests {
		st, out, hdr := rs[i%2].apiHeader(t, "POST", "/api/tickets", tt.key, nil, tt.hdr...)
		if st != tt.want {
			t.Errorf("%s: %d %v, want %d", tt.name, st, out, tt.want)
		}
		if st == http.StatusTooManyRequests && (hdr.Get("Retry-After") == "" || hdr.Get("X-RateLimit-Limit") != "4") {
			t.Errorf("%s: 429 headers %v, want Retry-After and X-RateLimit-Limit 4", tt.name, hdr)
		}
	}
}
