package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/heraldgw/herald/internal/redistest"
)

// TestDevEndpointsAreNotCrossSite: a page elsewhere cannot log its
// visitors in as someone, or start jobs for them: dev POSTs take JSON only
// (which a cross-site form cannot send) from allowed origins.
func TestDevEndpointsAreNotCrossSite(t *testing.T) {
	r := startReplica(t, "solo", nil)
	login := `{"userId":"alice"}`
	tests := []struct {
		name, path, body string
		hdr              []string
		want             int
	}{
		{"JSON without Origin", "/dev/login", login, nil, 200},
		{"JSON from its own page", "/dev/login", login, []string{"Origin", "http://" + r.addr}, 200},
		{"JSON from another site", "/dev/login", login, []string{"Origin", "https://evil.test"}, 403},
		{"JSON from a sandboxed frame", "/dev/login", login, []string{"Origin", "null"}, 403},
		{"text/plain", "/dev/login", login, []string{"Content-Type", "text/plain"}, 415},
		{"a form", "/dev/login", "userId=alice", []string{"Content-Type", "application/x-www-form-urlencoded"}, 415},
		{"multipart", "/dev/login", "--x\r\n\r\nalice\r\n--x--", []string{"Content-Type", "multipart/form-data; boundary=x"}, 415},
		{"no body", "/dev/login", "", nil, 400},
		{"a job from another site", "/dev/jobs", `{"kind":"blur"}`, []string{"Origin", "https://evil.test"}, 403},
		{"a job as text/plain", "/dev/jobs", `{"kind":"blur"}`, []string{"Content-Type", "text/plain"}, 415},
		{"logout from another site", "/dev/logout", "", []string{"Origin", "https://evil.test"}, 403},
	}
	for _, tt := range tests {
		var body any
		if tt.body != "" {
			body = tt.body
		}
		if st, out := r.api(t, "POST", tt.path, "", body, tt.hdr...); st != tt.want {
			t.Errorf("%s: %d %v, want %d", tt.name, st, out, tt.want)
		}
	}
}

// TestDevModeWithRedisIsNeverAnAccident: HERALD_DEV with REDIS_URL stops
// the gateway unless forced; forced, it starts with a warning.
func TestDevModeWithRedisIsNeverAnAccident(t *testing.T) {
	srv := redistest.Start(t)
	vars := map[string]string{"HERALD_ADDR": "127.0.0.1:0", "REDIS_URL": srv.URL(), "HERALD_DEV": "true"}
	err := runBriefly(t, vars)
	if err == nil || !strings.HasPrefix(err.Error(), "HERALD_DEV:") {
		t.Fatalf("run with HERALD_DEV and REDIS_URL returned %v, want an error naming HERALD_DEV", err)
	}
	r := startReplica(t, "forced", map[string]string{"REDIS_URL": srv.URL(), "HERALD_DEV": "true", "HERALD_DEV_FORCE": "true"})
	if !strings.Contains(r.logs.String(), `"level":"WARN","msg":"dev mode with a shared Redis`) {
		t.Errorf("a forced dev start logged no warning:\n%s", r.logs)
	}
	if st, _ := r.api(t, "POST", "/dev/login", "", map[string]string{"userId": "u"}); st != http.StatusOK {
		t.Errorf("dev login when forced: %d, want 200", st)
	}
}

// TestDevModePrintsThePageURL: in dev mode the gateway prints the URL of
// the demo page after the address it listens on.
func TestDevModePrintsThePageURL(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	vars := map[string]string{"HERALD_ADDR": "127.0.0.1:0"}
	go func() { done <- run(ctx, nil, func(k string) string { return vars[k] }, out, io.Discard) }()
	eventually(t, "the demo page's URL", func() bool { return strings.Contains(out.String(), "\ndemo page: http://127.0.0.1:") })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	listen, page, _ := strings.Cut(out.String(), "\n")
	addr := strings.TrimPrefix(listen, "listening on ")
	if want := "demo page: http://" + addr + "/\n"; page != want {
		t.Errorf("printed %q, want %q", page, want)
	}
}
