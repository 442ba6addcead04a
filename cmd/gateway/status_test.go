package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestUnusableSessionUserIs401: a session the app wrote with a userId that
// cannot form a channel name is refused with 401 (not 503, which clients
// retry for ever), and the log says why.
func TestUnusableSessionUserIs401(t *testing.T) {
	srv, rs := cluster(t, 1, nil)
	r := rs[0]
	exp := time.Now().Add(time.Hour).UnixMilli()
	for id, user := range map[string]string{"spaced-0001": `"has space"`, "long-0001": `"` + strings.Repeat("u", 200) + `"`} {
		srv.Client().Set(t.Context(), "session:"+id, fmt.Sprintf(`{"userId":%s,"expiresAt":%d}`, user, exp), time.Hour)
		if st, _ := dialStatus(t, r.wsURL(""), bearerHeader(id)); st != http.StatusUnauthorized {
			t.Errorf("connect with %s: %d, want 401", id, st)
		}
		if st, body := r.api(t, "POST", "/api/tickets", id, nil); st != http.StatusUnauthorized {
			t.Errorf("ticket with %s: %d %v, want 401", id, st, body)
		}
	}
	if n := strings.Count(r.logs.String(), "userId cannot form a channel name"); n < 4 {
		t.Errorf("%d log lines say the userId cannot form a channel name, want 4:\n%s", n, r.logs)
	}
}

// TestAPIErrorsAreJSON: unknown API paths are 404, known ones with another
// method 405 with Allow, bodies not declared JSON 415, fields given twice
// or in another case 400 naming the field; every answer is the JSON error
// body.
func TestAPIErrorsAreJSON(t *testing.T) {
	_, rs := cluster(t, 1, nil)
	r := rs[0]
	pub := `{"channel":"user:1","event":"e"}`
	tests := []struct {
		name, method, path, key, body string
		hdr                           []string
		want                          int
		code, field                   string
	}{
		{"unknown API path", "GET", "/api/nope", "", "", nil, 404, "not_found", ""},
		{"unknown API path, POST", "POST", "/api/nope", testAPIKey, pub, nil, 404, "not_found", ""},
		{"unknown API sub-path", "POST", "/api/publish/nope", testAPIKey, pub, nil, 404, "not_found", ""},
		{"GET on a POST route", "GET", "/api/publish", testAPIKey, "", nil, 405, "method_not_allowed", ""},
		{"PUT on a POST route", "PUT", "/api/tickets", "", "", nil, 405, "method_not_allowed", ""},
		{"POST on a DELETE route", "POST", "/api/sessions/x", testAPIKey, "", nil, 405, "method_not_allowed", ""},
		{"text/plain", "POST", "/api/publish", testAPIKey, pub, []string{"Content-Type", "text/plain"}, 415, "unsupported_media_type", "Content-Type"},
		{"form", "POST", "/api/sessions", testAPIKey, `{"userId":"u","ttl":60}`, []string{"Content-Type", "application/x-www-form-urlencoded"}, 415, "unsupported_media_type", "Content-Type"},
		{"no Content-Type", "POST", "/api/publish/batch", testAPIKey, `{"items":[` + pub + `]}`, []string{"Content-Type", ""}, 415, "unsupported_media_type", "Content-Type"},
		{"another charset", "POST", "/api/publish", testAPIKey, pub, []string{"Content-Type", "application/json; charset=latin1"}, 415, "unsupported_media_type", "Content-Type"},
		{"UTF-8 charset", "POST", "/api/publish", testAPIKey, pub, []string{"Content-Type", "application/json; charset=UTF-8"}, 202, "", ""},
		{"a form to tickets", "POST", "/api/tickets", "", "a=b", []string{"Content-Type", "application/x-www-form-urlencoded"}, 415, "unsupported_media_type", "Content-Type"},
		{"field twice", "POST", "/api/publish", testAPIKey, `{"channel":"user:1","channel":"user:2","event":"e"}`, nil, 400, "bad_request", "channel"},
		{"field in another case", "POST", "/api/publish", testAPIKey, `{"Channel":"user:1","event":"e"}`, nil, 400, "bad_request", "Channel"},
		{"batch item field twice", "POST", "/api/publish/batch", testAPIKey, `{"items":[` + pub + `,{"channel":"user:1","event":"e","event":"f"}]}`, nil, 400, "bad_request", "items[1].event"},
		{"batch field in another case", "POST", "/api/publish/batch", testAPIKey, `{"ITEMS":[` + pub + `]}`, nil, 400, "bad_request", "ITEMS"},
		{"session field twice", "POST", "/api/sessions", testAPIKey, `{"userId":"a","userId":"b","ttl":60}`, nil, 400, "bad_request", "userId"},
		{"data is the publisher's own", "POST", "/api/publish", testAPIKey, `{"channel":"user:1","event":"e","data":{"a":1,"a":2,"A":3}}`, nil, 202, "", ""},
	}
	for _, tt := range tests {
		var body any
		if tt.body != "" {
			body = tt.body
		}
		st, out, hdr := r.apiHeader(t, tt.method, tt.path, tt.key, body, tt.hdr...)
		if st != tt.want {
			t.Errorf("%s: %d %v, want %d", tt.name, st, out, tt.want)
			continue
		}
		if tt.code == "" {
			continue
		}
		e, _ := out["error"].(map[string]any)
		if e["code"] != tt.code || (tt.field != "" && e["field"] != tt.field) {
			t.Errorf("%s: body %v, want code %s field %q", tt.name, out, tt.code, tt.field)
		}
		if st == 405 && hdr.Get("Allow") == "" {
			t.Errorf("%s: 405 without Allow", tt.name)
		}
	}
}
