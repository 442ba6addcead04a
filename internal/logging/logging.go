// Package logging builds the one JSON log Herald's gateway writes: its own
// records, net/http's and go-redis's lines, all in one format, durations as
// strings ("1.5s"), and a Redis that refuses Herald's password or is not
// Redis at all reported as one clear ERROR line, repeated at most every few
// seconds, instead of every component's retries saying it in their words.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Every is how often one repeated line (a Redis fault, a go-redis line)
// is written at most.
const Every = 5 * time.Second

// New returns the JSON logger writing to w at level.
func New(w io.Writer, level slog.Leveler) *slog.Logger { return newLogger(w, level, time.Now) }

func newLogger(w io.Writer, level slog.Leveler, now func() time.Time) *slog.Logger {
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: durationsAsStrings})
	return slog.New(&faultHandler{Handler: h, seen: newRepeats(Every, now)})
}

// durationsAsStrings writes time.Duration values as "1.5s", not as
// nanoseconds.
func durationsAsStrings(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}

// A redisFault is a Redis failure that no retry mends: the configuration
// is wrong.
type redisFault struct {
	kind    string
	msg     string   // the one clear line
	markers []string // texts of the errors that show it
}

var redisFaults = []redisFault{
	{"auth", "Redis refuses Herald's credentials: check the user and password in REDIS_URL (and the user's ACL)",
		[]string{"WRONGPASS", "NOAUTH", "NOPERM", "invalid password", "invalid username-password"}},
	{"protocol", "REDIS_URL does not answer like Redis: check its host, port and scheme (redis:// or rediss://)",
		[]string{"redis: invalid reply", "redis: can't parse", "first record does not look like a TLS handshake"}},
}

// faultHandler turns every record whose error shows a redisFault into that
// fault's one clear ERROR line, written at most once per Every (with the
// count of those folded into it since), and passes the others on.
type faultHandler struct {
	slog.Handler
	seen *repeats // shared by the handlers WithAttrs and WithGroup derive
}

// Handle writes r, or the clear line of the Redis fault its error shows.
func (h *faultHandler) Handle(ctx context.Context, r slog.Record) error {
	f, cause := faultOf(r)
	if f == nil {
		return h.Handler.Handle(ctx, r)
	}
	write, suppressed := h.seen.allow(f.kind)
	if !write {
		return nil
	}
	clear := slog.NewRecord(r.Time, slog.LevelError, f.msg, r.PC)
	clear.AddAttrs(slog.String("err", cause), slog.Int("suppressed", suppressed))
	return h.Handler.Handle(ctx, clear)
}

// WithAttrs returns the handler with attrs, sharing the fault counts.
func (h *faultHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &faultHandler{Handler: h.Handler.WithAttrs(attrs), seen: h.seen}
}

// WithGroup returns the handler with a group, sharing the fault counts.
func (h *faultHandler) WithGroup(name string) slog.Handler {
	return &faultHandler{Handler: h.Handler.WithGroup(name), seen: h.seen}
}

// faultOf returns the Redis fault that r's "err" (or go-redis's "detail")
// shows, and that text.
func faultOf(r slog.Record) (*redisFault, string) {
	var found *redisFault
	var text string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "err" && a.Key != "detail" {
			return true
		}
		text = a.Value.String()
		for i := range redisFaults {
			for _, m := range redisFaults[i].markers {
				if strings.Contains(text, m) {
					found = &redisFaults[i]
					return false
				}
			}
		}
		return true
	})
	return found, text
}

// RedisLogger adapts log for redis.SetLogger: go-redis's lines become WARN
// records "go-redis" with the line in "detail", each line (by its format)
// at most once per Every, with the count of those left out.
func RedisLogger(log *slog.Logger) interface {
	Printf(ctx context.Context, format string, v ...any)
} {
	return &redisLogger{log: log, seen: newRepeats(Every, time.Now)}
}

type redisLogger struct {
	log  *slog.Logger
	seen *repeats
}

func (l *redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if write, suppressed := l.seen.allow(format); write {
		l.log.WarnContext(ctx, "go-redis", "detail", strings.TrimSpace(fmt.Sprintf(format, v...)), "suppressed", suppressed)
	}
}

// repeats lets each key through at most once per interval, counting the
// others.
type repeats struct {
	every time.Duration
	now   func() time.Time

	mu         sync.Mutex
	next       map[string]time.Time // when key may be written again; guarded by mu
	suppressed map[string]int       // left out since key was last written; guarded by mu
}

func newRepeats(every time.Duration, now func() time.Time) *repeats {
	return &repeats{every: every, now: now, next: map[string]time.Time{}, suppressed: map[string]int{}}
}

// allow reports whether key may be written now, and how many were left out
// since it last was.
func (r *repeats) allow(key string) (bool, int) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Before(r.next[key]) {
		r.suppressed[key]++
		return false, 0
	}
	r.next[key] = now.Add(r.every)
	n := r.suppressed[key]
	delete(r.suppressed, key)
	return true, n
}
