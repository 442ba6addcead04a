package session_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
	"github.com/heraldgw/herald/internal/session"
	"github.com/heraldgw/herald/internal/session/sessiontest"
)

// names has a prefix so that the tests see it applied to Herald's own names
// and not to the classic session keys.
var names = events.Names{Prefix: "hx:"}

// logBuffer collects a store's log lines, safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newRedisStore returns a store with its own client on srv, and its log.
func newRedisStore(t *testing.T, srv *redistest.Server, now func() time.Time) (*session.Redis, *logBuffer) {
	t.Helper()
	logs := new(logBuffer)
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("store log:\n%s", logs)
		}
	})
	return session.NewRedis(srv.Client(), names, log, now), logs
}

func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	sessiontest.Run(t, func(t *testing.T, now func() time.Time) session.Store {
		st, _ := newRedisStore(t, srv, now)
		return st
	})
}

// classicSet writes a session as an existing app does.
func classicSet(t *testing.T, rdb *redis.Client, id, json string) {
	t.Helper()
	if err := rdb.Set(t.Context(), "session:"+id, json, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestRedisClassicApp(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	clk := sessiontest.NewClock()
	st, _ := newRedisStore(t, srv, clk.Now)
	ctx := t.Context()

	exp := clk.Now().Add(5 * time.Second).UnixMilli()
	classicSet(t, rdb, "abc", fmt.Sprintf(`{"userId":"42","email":"a@b.c","plan":"pro","expiresAt":%d,"extra":{"x":1}}`, exp))
	want := session.Session{ID: "abc", UserID: "42", Email: "a@b.c", Plan: "pro", ExpiresAt: exp}
	got, err := st.Get(ctx, "abc")
	if err != nil || got != want {
		t.Fatalf("Get = %+v, %v; want %+v", got, err, want)
	}
	if alive, err := st.Alive(ctx, []string{"abc"}); err != nil || !alive[0] {
		t.Fatalf("Alive = %v, %v; want [true]", alive, err)
	}

	// expiresAt is in milliseconds: 5 s later it has passed (read as
	// seconds it would be far in the future).
	clk.Advance(5*time.Second - time.Millisecond)
	if _, err := st.Get(ctx, "abc"); err != nil {
		t.Fatalf("Get 1ms before expiresAt: %v", err)
	}
	clk.Advance(time.Millisecond)
	if _, err := st.Get(ctx, "abc"); !errors.Is(err, session.ErrExpired) {
		t.Fatalf("Get at expiresAt: got %v, want ErrExpired", err)
	}

	// A numeric user id, as JSON.stringify writes one.
	classicSet(t, rdb, "num", fmt.Sprintf(`{"userId":7,"expiresAt":%d}`, clk.Now().Add(time.Minute).UnixMilli()))
	if got, err := st.Get(ctx, "num"); err != nil || got.UserID != "7" {
		t.Fatalf("Get(numeric userId) = %+v, %v; want user 7", got, err)
	}
}

func TestRedisExpiresAtInSeconds(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	st, logs := newRedisStore(t, srv, nil)
	classicSet(t, rdb, "sec", fmt.Sprintf(`{"userId":"42","expiresAt":%d}`, time.Now().Add(time.Hour).Unix()))
	if _, err := st.Get(t.Context(), "sec"); !errors.Is(err, session.ErrExpired) {
		t.Fatalf("Get(expiresAt in seconds): got %v, want ErrExpired", err)
	}
	if !strings.Contains(logs.String(), "seconds instead of milliseconds") {
		t.Errorf("no hint about seconds in the log:\n%s", logs)
	}
}

func TestRedisUnusableSession(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	st, logs := newRedisStore(t, srv, nil)
	ctx := t.Context()
	const id = "secret-session-id-1234"
	exp := time.Now().Add(time.Hour).UnixMilli()
	for _, data := range []string{
		`not json`,
		`{"email":"a@b.c","expiresAt":` + fmt.Sprint(exp) + `}`,
		`{"userId":"","expiresAt":` + fmt.Sprint(exp) + `}`,
		`{"userId":"42"}`,
	} {
		classicSet(t, rdb, id, data)
		_, err := st.Get(ctx, id)
		if !errors.Is(err, session.ErrNotFound) {
			t.Errorf("Get(%s): got %v, want ErrNotFound", data, err)
		}
		if err != nil && strings.Contains(err.Error(), id) {
			t.Errorf("Get(%s): error %q contains the session id", data, err)
		}
		if alive, err := st.Alive(ctx, []string{id}); err != nil || alive[0] {
			t.Errorf("Alive(%s) = %v, %v; want [false]", data, alive, err)
		}
	}
	if err := rdb.Del(ctx, "session:"+id).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(ctx, "session:"+id, "userId", "42").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, id); !errors.Is(err, session.ErrNotFound) {
		t.Errorf("Get(a hash): got %v, want ErrNotFound", err)
	}
	if alive, err := st.Alive(ctx, []string{id}); err != nil || alive[0] {
		t.Errorf("Alive(a hash) = %v, %v; want [false]", alive, err)
	}
	if !strings.Contains(logs.String(), session.Hash(id)) {
		t.Errorf("the log names no unusable session by its hash:\n%s", logs)
	}
	if strings.Contains(logs.String(), id) {
		t.Errorf("the log contains the session id:\n%s", logs)
	}
}

// The app deletes a session key itself: the periodic check sees it gone.
func TestRedisAppDeletesKey(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	st, _ := newRedisStore(t, srv, nil)
	ctx := t.Context()
	a, err := st.Create(ctx, "u-1", "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.Create(ctx, "u-2", "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, "session:"+a.ID).Err(); err != nil {
		t.Fatal(err)
	}
	alive, err := st.Alive(ctx, []string{a.ID, b.ID})
	if err != nil || alive[0] || !alive[1] {
		t.Fatalf("Alive = %v, %v; want [false true]", alive, err)
	}
}

// What Create writes and Revoke publishes is what apps and other replicas read.
func TestRedisWireFormat(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	st, _ := newRedisStore(t, srv, nil)
	ctx := t.Context()

	ps := rdb.Subscribe(ctx, names.Revocations())
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}

	s, err := st.Create(ctx, "u-1", "a@b.c", "pro", 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := rdb.Get(ctx, "session:"+s.ID).Bytes()
	if err != nil {
		t.Fatalf("GET session:{id}: %v", err)
	}
	var fields map[string]any
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"userId": "u-1", "email": "a@b.c", "plan": "pro", "expiresAt": float64(s.ExpiresAt)}
	if fmt.Sprint(fields) != fmt.Sprint(want) {
		t.Errorf("session JSON: got %s, want %v", raw, want)
	}
	if ttl, err := rdb.PTTL(ctx, "session:"+s.ID).Result(); err != nil || ttl <= 80*time.Second || ttl > 90*time.Second {
		t.Errorf("session key TTL: got %v, %v; want about 90s", ttl, err)
	}

	tk, err := st.IssueTicket(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if ttl, err := rdb.PTTL(ctx, names.Ticket(tk)).Result(); err != nil || ttl <= session.TicketTTL-10*time.Second || ttl > session.TicketTTL {
		t.Errorf("ticket key %s TTL: got %v, %v; want about %v", names.Ticket("…"), ttl, err, session.TicketTTL)
	}
	if _, err := st.RedeemTicket(ctx, tk); err != nil {
		t.Fatal(err)
	}
	if n, err := rdb.Exists(ctx, names.Ticket(tk)).Result(); err != nil || n != 0 {
		t.Errorf("redeemed ticket key still exists: %v, %v", n, err)
	}

	if err := st.Revoke(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	msg, err := ps.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rev map[string]any
	if err := json.Unmarshal([]byte(msg.Payload), &rev); err != nil {
		t.Fatal(err)
	}
	if want := map[string]any{"user": "u-1", "sid": session.Hash(s.ID)}; fmt.Sprint(rev) != fmt.Sprint(want) {
		t.Errorf("revocation: got %s, want %v", msg.Payload, want)
	}
	if strings.Contains(msg.Payload, s.ID) {
		t.Errorf("revocation %s carries the session id", msg.Payload)
	}
}

// A session an app overwrote with garbage is still revoked and announced.
func TestRedisRevokeUnusable(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	st, _ := newRedisStore(t, srv, nil)
	w := sessiontest.StartWatch(t, st)
	classicSet(t, rdb, "garbage", `{"nope`)
	if err := st.Revoke(t.Context(), "garbage"); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	w.Expect(t, session.Revocation{SessionHash: session.Hash("garbage")})
	if n, _ := rdb.Exists(t.Context(), "session:garbage").Result(); n != 0 {
		t.Error("the key was not deleted")
	}
}

// Bad messages on the revocation channel are logged and skipped.
func TestRedisWatchBadMessage(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	st, logs := newRedisStore(t, srv, nil)
	ctx := t.Context()
	w := sessiontest.StartWatch(t, st)
	for _, bad := range []string{`garbage`, `{"user":"u-1"}`, `[]`} {
		if err := rdb.Publish(ctx, names.Revocations(), bad).Err(); err != nil {
			t.Fatal(err)
		}
	}
	s, err := st.Create(ctx, "u-1", "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Revoke(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	w.Expect(t, session.Revocation{UserID: "u-1", SessionHash: session.Hash(s.ID)})
	if n := strings.Count(logs.String(), "ignoring bad revocation message"); n != 3 {
		t.Errorf("logged %d bad messages, want 3:\n%s", n, logs)
	}
}

// Watch re-subscribes after Redis restarts.
func TestRedisWatchSurvivesRestart(t *testing.T) {
	srv := redistest.Start(t)
	st, logs := newRedisStore(t, srv, nil)
	w := sessiontest.StartWatch(t, st)
	srv.Restart()
	w.Sync(t, st)
	ctx := t.Context()
	s, err := st.Create(ctx, "u-1", "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Revoke(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	w.Expect(t, session.Revocation{UserID: "u-1", SessionHash: session.Hash(s.ID)})
	if !strings.Contains(logs.String(), "re-subscribed") {
		t.Errorf("the re-subscription was not logged:\n%s", logs)
	}
}

// Backend failures are errors, not ErrNotFound: a client must get 503, not 401.
func TestRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	// No retries: the test wants the failure, not the patience.
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { rdb.Close() })
	st := session.NewRedis(rdb, names, nil, nil)
	ctx := t.Context()
	s, err := st.Create(ctx, "u-1", "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := st.Get(ctx, s.ID); err == nil || errors.Is(err, session.ErrNotFound) || strings.Contains(err.Error(), s.ID) {
		t.Errorf("Get with Redis down: got %v, want a backend error without the id", err)
	}
	if _, err := st.Alive(ctx, []string{s.ID, "other"}); err == nil {
		t.Error("Alive with Redis down: got no error")
	}
	if err := st.Revoke(ctx, s.ID); err == nil || errors.Is(err, session.ErrNotFound) {
		t.Errorf("Revoke with Redis down: got %v, want a backend error", err)
	}
	if _, err := st.RedeemTicket(ctx, strings.Repeat("A", 43)); err == nil || errors.Is(err, session.ErrNotFound) {
		t.Errorf("RedeemTicket with Redis down: got %v, want a backend error", err)
	}
}

// TestRedisConcurrentGets: Gets that arrive together share pipelines
// (session.Redis batches them), and each still gets its own answer: its
// session, ErrNotFound for a missing key or one of another type.
func TestRedisConcurrentGets(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	st, _ := newRedisStore(t, srv, nil)
	ctx := t.Context()
	const n = 100
	users := map[string]string{} // session id → user id; "" for no usable session
	for i := range n {
		s, err := st.Create(ctx, fmt.Sprint("u-", i), "", "", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		users[s.ID] = s.UserID
		users[fmt.Sprint("missing-", i)] = ""
	}
	rdb.RPush(ctx, "session:a-list", "x")
	users["a-list"] = ""

	var wg sync.WaitGroup
	for id, user := range users {
		for range 2 {
			wg.Go(func() {
				s, err := st.Get(ctx, id)
				switch {
				case user == "" && !errors.Is(err, session.ErrNotFound):
					t.Errorf("Get(%s): got %+v, %v, want ErrNotFound", id, s, err)
				case user != "" && (err != nil || s.UserID != user || s.ID != id):
					t.Errorf("Get(%s): got %+v, %v, want user %s", id, s, err, user)
				}
			})
		}
	}
	wg.Wait()
}
