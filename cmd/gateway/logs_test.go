package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/logging"
	"github.com/heraldgw/herald/internal/redistest"
)

// logLines decodes every line the replica logged, failing on any that is
// not JSON.
func logLines(t *testing.T, r *replica) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(r.logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("a log line is not JSON: %q", l)
		}
		out = append(out, m)
	}
	return out
}

// TestRedisFaultsAreOneClearLogLine: a Redis that refuses the password, or
// a REDIS_URL that is not Redis, is one clear ERROR line, repeated at most
// every logging.Every, whatever the components retrying say; every line is
// JSON (go-redis's own ones too), and durations are strings.
func TestRedisFaultsAreOneClearLogLine(t *testing.T) {
	wrongPassword := func(t *testing.T) string {
		srv := redistest.Start(t)
		// Connections opened after this must authenticate; the helper's own
		// stays authenticated.
		if err := srv.Client().ConfigSet(t.Context(), "requirepass", "the-right-one").Err(); err != nil {
			t.Fatal(err)
		}
		return "redis://:wrong@" + srv.Addr
	}
	notRedis := func(t *testing.T) string {
		web := httptest.NewServer(http.NotFoundHandler())
		t.Cleanup(web.Close)
		return "redis://" + web.Listener.Addr().String()
	}
	tests := []struct {
		name, clear string
		url         func(t *testing.T) string
		cause       string // in no other line
	}{
		{"wrong password", "Redis refuses Herald's credentials", wrongPassword, "WRONGPASS"},
		{"not Redis", "REDIS_URL does not answer like Redis", notRedis, "invalid reply"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			r := startReplicaUnready(t, "r", map[string]string{"REDIS_URL": tt.url(t)})
			clearLines := func() int { return strings.Count(r.logs.String(), tt.clear) }
			deadline := time.Now().Add(3 * logging.Every)
			for clearLines() < 2 { // the first, and its repeat
				if time.Now().After(deadline) {
					t.Fatalf("%d clear lines after %v:\n%s", clearLines(), time.Since(start), r.logs)
				}
				time.Sleep(50 * time.Millisecond)
			}
			r.stop()
			elapsed := time.Since(start)
			n := 0
			for _, l := range logLines(t, r) {
				msg, _ := l["msg"].(string)
				if strings.HasPrefix(msg, tt.clear) {
					n++
					if l["level"] != "ERROR" {
						t.Errorf("clear line at %v: %v", l["level"], l)
					}
					continue
				}
				if b, _ := json.Marshal(l); strings.Contains(string(b), tt.cause) {
					t.Errorf("another line tells the fault: %s", b)
				}
			}
			if most := 1 + int(elapsed/logging.Every); n > most {
				t.Errorf("%d clear lines in %v, want at most %d", n, elapsed, most)
			}
			if d := regexp.MustCompile(`"(retry|window|after)":\d`); d.MatchString(r.logs.String()) {
				t.Errorf("a duration logged as a number: %s", d.FindString(r.logs.String()))
			}
		})
	}
}

// TestGoRedisLinesAreJSON: with Redis gone, go-redis's own complaints come
// through the gateway's JSON log, not as plain text lines among them.
func TestGoRedisLinesAreJSON(t *testing.T) {
	srv := redistest.Start(t)
	r := startReplica(t, "r", map[string]string{"REDIS_URL": srv.URL()})
	srv.Kill()
	eventually(t, "go-redis to complain", func() bool { return strings.Contains(r.logs.String(), `"msg":"go-redis"`) })
	r.stop()
	logLines(t, r)
}
