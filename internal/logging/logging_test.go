package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a time source the test moves.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// lines decodes the JSON lines of buf.
func lines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %q", l)
		}
		out = append(out, m)
	}
	buf.Reset()
	return out
}

func TestDurationsAreStrings(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, slog.LevelInfo).WithGroup("g").Info("x", "retry", 1500*time.Millisecond)
	got := lines(t, &buf)
	if g, _ := got[0]["g"].(map[string]any); g["retry"] != "1.5s" {
		t.Errorf("got %v, want retry \"1.5s\"", got[0])
	}
}

// TestRedisFaultIsOneClearLine: whichever component reports a Redis that
// refuses the password or is not Redis, in whatever words, the log says it
// once, as an ERROR naming REDIS_URL, and again at most every Every with
// the count of the reports folded in; other records pass untouched.
func TestRedisFaultIsOneClearLine(t *testing.T) {
	var buf bytes.Buffer
	c := &clock{t: time.Unix(1000, 0)}
	log := newLogger(&buf, slog.LevelDebug, c.now).With("node", "a")
	wrongpass := errors.New("subscribe 2 channel(s): failed to authenticate: WRONGPASS invalid username-password pair")
	notRedis := errors.New(`redis ping: redis: invalid reply: "HTTP/1.1 400 Bad Request"`)

	log.Warn("redis pub/sub: subscription change failed, will retry", "err", wrongpass, "retry", 50*time.Millisecond)
	log.Error("backend unreachable", "err", wrongpass)
	log.Info("unrelated", "err", errors.New("dial tcp: connection refused"))
	RedisLogger(log).Printf(context.Background(), "redis: %s: %v", "pool", wrongpass)
	got := lines(t, &buf)
	if len(got) != 2 || got[0]["level"] != "ERROR" || !strings.Contains(got[0]["msg"].(string), "REDIS_URL") ||
		got[0]["node"] != "a" || got[0]["suppressed"] != 0.0 || got[1]["msg"] != "unrelated" {
		t.Fatalf("got %v; want one clear ERROR (with the node) and the unrelated line", got)
	}

	c.add(Every)
	log.Warn("retry", "err", wrongpass)
	log.Warn("retry", "err", notRedis)
	got = lines(t, &buf)
	if len(got) != 2 || got[0]["suppressed"] != 2.0 || got[1]["level"] != "ERROR" || !strings.Contains(got[1]["msg"].(string), "does not answer like Redis") {
		t.Fatalf("got %v; want the credentials line again (2 folded in) and the not-Redis line", got)
	}
}

func TestRedisLoggerRepeatsALineAtMostEveryInterval(t *testing.T) {
	var buf bytes.Buffer
	c := &clock{t: time.Unix(1000, 0)}
	l := &redisLogger{log: New(&buf, slog.LevelInfo), seen: newRepeats(Every, c.now)}
	for range 3 {
		l.Printf(context.Background(), "redis: connection pool: failed to dial after %d attempts: %v\n", 5, "refused")
	}
	l.Printf(context.Background(), "redis: another line")
	c.add(Every)
	l.Printf(context.Background(), "redis: connection pool: failed to dial after %d attempts: %v\n", 5, "refused")
	got := lines(t, &buf)
	if len(got) != 3 || got[0]["msg"] != "go-redis" || got[0]["level"] != "WARN" ||
		got[0]["detail"] != "redis: connection pool: failed to dial after 5 attempts: refused" ||
		got[1]["detail"] != "redis: another line" || got[2]["suppressed"] != 2.0 {
		t.Errorf("got %v", got)
	}
}
