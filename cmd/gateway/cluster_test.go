package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/heraldgw/herald"
	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

// cluster starts a private Redis and n replicas sharing it.
func cluster(t *testing.T, n int, env map[string]string) (*redistest.Server, []*replica) {
	t.Helper()
	srv := redistest.Start(t)
	var rs []*replica
	for i := range n {
		e := map[string]string{"REDIS_URL": srv.URL()}
		for k, v := range env {
			e[k] = v
		}
		rs = append(rs, startReplica(t, fmt.Sprintf("r%d", i), e))
	}
	return srv, rs
}

func TestCrossReplicaDelivery(t *testing.T) {
	srv, rs := cluster(t, 3, nil)
	a, b := rs[0], rs[1]
	sid := a.newSession(t, "42")
	cl := dial(t, b.wsURL(""), bearerHeader(sid))
	if w := cl.nextOf("welcome"); w.str("node") != "r1" || w.str("user") != "42" {
		t.Fatalf("welcome %v", w)
	}

	t.Run("http on another replica", func(t *testing.T) {
		id := a.publish(t, "user:42", "note", map[string]any{"via": "http"})
		ev := cl.nextOf("event")
		if ev.str("id") != id || ev.str("channel") != "user:42" || ev.str("event") != "note" {
			t.Errorf("got %v, want id %s", ev, id)
		}
	})

	t.Run("go package", func(t *testing.T) {
		p := herald.NewRedisPublisher(srv.Client(), herald.RedisConfig{})
		ids, err := herald.PublishEffectComplete(context.Background(), p, herald.EffectComplete{
			UserID: "42", UserEffectID: uuid.NewString(), ResultURL: "https://cdn.test/r.png", Timestamp: time.UnixMilli(1732600000000),
		})
		if err != nil {
			t.Fatal(err)
		}
		ev := cl.nextOf("event")
		if ev.str("id") != ids[len(ids)-1] && ev.str("id") != ids[0] || ev.str("event") != "effect.complete" {
			t.Errorf("got %v, want one of %v", ev, ids)
		}
		cl.noEventBeforePong()
	})

	t.Run("classic PUBLISH once though every replica hears it", func(t *testing.T) {
		effect := uuid.NewString()
		if f := cl.subscribe("effect:" + effect); f.str("type") != "subscribed" {
			t.Fatalf("subscribe: %v", f)
		}
		payload := fmt.Sprintf(`{"userEffectId":%q,"resultUrl":"https://cdn.test/x.png","timestamp":1732600000000,"userId":"42"}`, effect)
		rdb := srv.Client()
		if err := rdb.Publish(context.Background(), "effect:complete", payload).Err(); err != nil {
			t.Fatal(err)
		}
		got := map[string]frame{}
		for len(got) < 2 {
			ev := cl.nextOf("event")
			if _, dup := got[ev.str("channel")]; dup {
				t.Fatalf("second event on %s: %v", ev.str("channel"), ev)
			}
			got[ev.str("channel")] = ev
		}
		for _, ch := range []string{"user:42", "effect:" + effect} {
			ev, ok := got[ch]
			data, _ := ev["data"].(map[string]any)
			if !ok || ev.str("event") != "effect.complete" || data["userEffectId"] != effect {
				t.Errorf("%s: got %v", ch, ev)
			}
		}
		cl.noEventBeforePong()
		r, err := events.NewRedisLog(rdb, events.Names{}, events.LogConfig{}).Range(context.Background(), "effect:"+effect, "")
		if err != nil || len(r.Events) != 1 {
			t.Errorf("history of effect:%s: %d entries (%v), want 1", effect, len(r.Events), err)
		}
	})
}

func TestThreeTabsOfOneUserEachGetEveryEventOnce(t *testing.T) {
	_, rs := cluster(t, 3, nil)
	sid := rs[0].newSession(t, "u1")
	var tabs []*client
	for _, r := range rs {
		tabs = append(tabs, dial(t, r.wsURL(""), bearerHeader(sid)))
	}
	for _, tab := range tabs {
		tab.nextOf("welcome")
	}
	var ids []string
	for i := range 30 {
		ids = append(ids, rs[i%3].publish(t, "user:u1", "n", i))
	}
	for i, tab := range tabs {
		for j, want := range ids {
			if got := tab.nextOf("event").str("id"); got != want {
				t.Fatalf("tab %d event %d: id %s, want %s", i, j, got, want)
			}
		}
		tab.noEventBeforePong()
	}
}

func TestUsersAreIsolated(t *testing.T) {
	_, rs := cluster(t, 2, nil)
	alice := dial(t, rs[0].wsURL(""), bearerHeader(rs[0].newSession(t, "alice")))
	bob := dial(t, rs[1].wsURL(""), bearerHeader(rs[1].newSession(t, "bob")))
	alice.nextOf("welcome")
	bob.nextOf("welcome")

	if f := alice.subscribe("user:bob"); f.str("code") != "forbidden" {
		t.Errorf("alice subscribing user:bob: %v, want forbidden", f)
	}
	rs[0].publish(t, "user:bob", "secret", "for bob")
	if ev := bob.nextOf("event"); ev.str("event") != "secret" {
		t.Errorf("bob got %v", ev)
	}
	alice.noEventBeforePong()
}

func TestSubscribeRules(t *testing.T) {
	srv, rs := cluster(t, 1, nil)
	r := rs[0]
	cl := dial(t, r.wsURL(""), bearerHeader(r.newSession(t, "u")))
	cl.nextOf("welcome")
	rdb := srv.Client()
	ctx := context.Background()
	mine, theirs := uuid.NewString(), uuid.NewString()
	rdb.Set(ctx, "effect:"+mine+":owner", "u", time.Minute)
	rdb.Set(ctx, "effect:"+theirs+":owner", "other", time.Minute)

	tests := []struct {
		channel, wantType, wantCode string
	}{
		{"effect:" + mine, "subscribed", ""},
		{"effect:" + theirs, "error", "forbidden"},
		{"effect:" + uuid.NewString(), "subscribed", ""}, // unowned uuid: a capability
		{"effect:guessable-1", "error", "forbidden"},
		{"public:news", "subscribed", ""},
		{"user:u", "subscribed", ""},
		{"user:someone", "error", "forbidden"},
		{"admin:all", "error", "not_found"},
		{"effect:complete", "error", "not_found"},
		{"bad channel!", "error", "bad_request"},
	}
	for _, tt := range tests {
		f := cl.subscribe(tt.channel)
		if f.str("type") != tt.wantType || f.str("code") != tt.wantCode {
			t.Errorf("subscribe %q: %v, want %s %s", tt.channel, f, tt.wantType, tt.wantCode)
		}
	}

	id := r.publish(t, "public:news", "headline", "hi")
	if ev := cl.nextOf("event"); ev.str("id") != id {
		t.Errorf("public event %v", ev)
	}
	if f := cl.subscribe("public:news"); f.str("type") != "subscribed" {
		t.Errorf("re-subscribe: %v", f)
	}
	ref := cl.send("unsubscribe", "public:news")
	if f := cl.nextOf("unsubscribed"); int(f["ref"].(float64)) != ref {
		t.Errorf("unsubscribe reply %v", f)
	}
	r.publish(t, "public:news", "headline", "after")
	cl.noEventBeforePong()
}

func TestConnectRefusals(t *testing.T) {
	srv, rs := cluster(t, 1, map[string]string{"HERALD_ALLOWED_ORIGINS": "app.example.com,*.trusted.test"})
	r := rs[0]
	ctx := context.Background()
	rdb := srv.Client()
	sid := r.newSession(t, "u")

	expired := "expired-session-0001"
	past := time.Now().Add(-time.Minute).UnixMilli()
	rdb.Set(ctx, "session:"+expired, fmt.Sprintf(`{"userId":"u","email":"e","plan":"p","expiresAt":%d}`, past), time.Minute)

	st, tb := r.api(t, "POST", "/api/tickets", sid, nil)
	if st != http.StatusCreated {
		t.Fatalf("ticket: %d %v", st, tb)
	}
	ticket := tb["ticket"].(string)
	c := dial(t, r.wsURL("?ticket="+ticket), nil) // first use works
	c.nextOf("welcome")

	tests := []struct {
		name  string
		query string
		hdr   http.Header
		want  int
	}{
		{"no credentials", "", nil, 401},
		{"unknown session", "", bearerHeader("nope"), 401},
		{"expired session", "", bearerHeader(expired), 401},
		{"used ticket", "?ticket=" + ticket, nil, 401},
		{"unknown ticket", "?ticket=forged", bearerHeader(sid), 401}, // the ticket decides
		{"cookie with unknown session", "", http.Header{"Cookie": {"sid=nope"}}, 401},
		{"foreign origin", "", http.Header{"Authorization": {"Bearer " + sid}, "Origin": {"https://evil.test"}}, 403},
		{"null origin", "", http.Header{"Authorization": {"Bearer " + sid}, "Origin": {"null"}}, 403},
	}
	for _, tt := range tests {
		if got, _ := dialStatus(t, r.wsURL(tt.query), tt.hdr); got != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, got, tt.want)
		}
	}
	for _, origin := range []string{"https://app.example.com", "https://x.trusted.test"} {
		c := dial(t, r.wsURL(""), http.Header{"Authorization": {"Bearer " + sid}, "Origin": {origin}})
		c.nextOf("welcome")
	}
	c = dial(t, r.wsURL(""), http.Header{"Cookie": {"sid=" + sid}})
	c.nextOf("welcome")
}

func TestBadClientFrames(t *testing.T) {
	_, rs := cluster(t, 1, nil)
	r := rs[0]
	sid := r.newSession(t, "u")

	cl := dial(t, r.wsURL(""), bearerHeader(sid))
	cl.nextOf("welcome")
	for _, raw := range []string{`not json`, `{"type":"dance","ref":7}`} {
		cl.sendRaw([]byte(raw))
		if f := cl.nextOf("error"); f.str("code") != "bad_request" {
			t.Errorf("%s: %v, want bad_request", raw, f)
		}
	}
	cl.send("ping", "") // a good frame resets the count
	cl.nextOf("pong")
	for range 4 {
		cl.sendRaw([]byte(`{}`))
	}
	if code := cl.closeCode(); code != websocket.StatusPolicyViolation {
		t.Errorf("repeated bad frames: close %d, want 1008", code)
	}

	big := dial(t, r.wsURL(""), bearerHeader(sid))
	big.nextOf("welcome")
	big.sendRaw([]byte(`{"type":"ping","pad":"` + strings.Repeat("x", 5000) + `"}`))
	if code := big.closeCode(); code != websocket.StatusPolicyViolation {
		t.Errorf("oversized frame: close %d, want 1008", code)
	}
}

func TestRevocationClosesSocketsOnEveryReplica(t *testing.T) {
	_, rs := cluster(t, 2, nil)
	sid := rs[0].newSession(t, "u")
	other := rs[0].newSession(t, "u")
	a := dial(t, rs[0].wsURL(""), bearerHeader(sid))
	b := dial(t, rs[1].wsURL(""), bearerHeader(sid))
	keep := dial(t, rs[1].wsURL(""), bearerHeader(other))
	for _, c := range []*client{a, b, keep} {
		c.nextOf("welcome")
	}
	if st, _ := rs[1].api(t, "DELETE", "/api/sessions/"+sid, testAPIKey, nil); st != http.StatusNoContent {
		t.Fatalf("revoke: %d", st)
	}
	for i, c := range []*client{a, b} {
		if code := c.closeCode(); code != 4001 {
			t.Errorf("socket %d closed with %d, want 4001", i, code)
		}
	}
	keep.send("ping", "")
	keep.nextOf("pong") // the user's other session is untouched
	if st, _ := rs[0].api(t, "DELETE", "/api/sessions/"+sid, testAPIKey, nil); st != http.StatusNotFound {
		t.Errorf("second revoke: %d, want 404", st)
	}
	if got, _ := dialStatus(t, rs[0].wsURL(""), bearerHeader(sid)); got != 401 {
		t.Errorf("connect with revoked session: %d, want 401", got)
	}
}

func TestSessionDeletedInRedisClosesSockets(t *testing.T) {
	srv, rs := cluster(t, 1, map[string]string{"HERALD_SESSION_CHECK": "100ms"})
	sid := rs[0].newSession(t, "u")
	cl := dial(t, rs[0].wsURL(""), bearerHeader(sid))
	cl.nextOf("welcome")
	srv.Client().Del(context.Background(), "session:"+sid)
	if code := cl.closeCode(); code != 4001 {
		t.Errorf("close %d, want 4001", code)
	}
}

func TestDrainClosesWith1012AndExitsCleanly(t *testing.T) {
	_, rs := cluster(t, 2, nil)
	r := rs[0]
	sid := r.newSession(t, "u")
	var cls []*client
	for range 5 {
		c := dial(t, r.wsURL(""), bearerHeader(sid))
		c.nextOf("welcome")
		cls = append(cls, c)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- r.stop() }()
	for i, c := range cls {
		if code := c.closeCode(); code != websocket.StatusServiceRestart {
			t.Errorf("socket %d closed with %d, want 1012", i, code)
		}
	}
	if err := <-stopped; err != nil {
		t.Errorf("run returned %v, want nil", err)
	}
	// The other replica still serves.
	c := dial(t, rs[1].wsURL(""), bearerHeader(sid))
	c.nextOf("welcome")
}

func TestRedisOutage(t *testing.T) {
	// The restarted Redis keeps nothing (no persistence), the session
	// neither: a session check, due at any moment of its first interval,
	// would close the socket (rightly). This test is about the outage.
	srv, rs := cluster(t, 1, map[string]string{"HERALD_SESSION_CHECK": "1h"})
	r := rs[0]
	sid := r.newSession(t, "u")
	cl := dial(t, r.wsURL(""), bearerHeader(sid))
	cl.nextOf("welcome")

	srv.Kill()
	eventually(t, "readyz to fail", func() bool { st, _ := r.api(t, "GET", "/readyz", "", nil); return st == 503 })
	if st, h := dialStatus(t, r.wsURL(""), bearerHeader(sid)); st != 503 || h.Get("Retry-After") == "" {
		t.Errorf("connect during outage: %d (Retry-After %q), want 503 with Retry-After", st, h.Get("Retry-After"))
	}
	if st, _ := r.api(t, "POST", "/api/publish", testAPIKey, map[string]any{"channel": "user:u", "event": "x"}); st != 503 {
		t.Errorf("publish during outage: %d, want 503", st)
	}
	cl.send("ping", "")
	cl.nextOf("pong") // open sockets stay

	srv.Restart()
	eventually(t, "readyz to recover", func() bool { st, _ := r.api(t, "GET", "/readyz", "", nil); return st == 200 })
	// The personal channel is re-subscribed by the broker itself; publish
	// until one arrives (the first may race the re-subscribe).
	deadline := time.Now().Add(10 * time.Second)
	for {
		id := r.publish(t, "user:u", "after", nil)
		f := waitEvent(cl, 200*time.Millisecond)
		if f != nil && f.str("id") == id {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no delivery after Redis came back")
		}
	}
}

func TestRedisDownAtStart(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	r := startReplicaUnready(t, "r0", map[string]string{"REDIS_URL": srv.URL()})
	if st, _ := r.api(t, "GET", "/healthz", "", nil); st != 200 {
		t.Errorf("healthz %d, want 200: the process is up", st)
	}
	if st, _ := r.api(t, "GET", "/readyz", "", nil); st != 503 {
		t.Errorf("readyz %d, want 503", st)
	}
	if st, _ := dialStatus(t, r.wsURL(""), bearerHeader("whatever")); st != 503 {
		t.Errorf("connect: %d, want 503", st)
	}
	srv.Restart()
	eventually(t, "readyz to recover", func() bool { st, _ := r.api(t, "GET", "/readyz", "", nil); return st == 200 })
	sid := r.newSession(t, "u")
	cl := dial(t, r.wsURL(""), bearerHeader(sid))
	cl.nextOf("welcome")
	id := r.publish(t, "user:u", "hello", nil)
	if ev := cl.nextOf("event"); ev.str("id") != id {
		t.Errorf("event %v, want id %s", ev, id)
	}
}

func waitEvent(cl *client, d time.Duration) frame {
	timeout := time.After(d)
	for {
		select {
		case f := <-cl.frames:
			if f.str("type") == "event" {
				return f
			}
		case <-timeout:
			return nil
		}
	}
}

func TestPublishAPI(t *testing.T) {
	_, rs := cluster(t, 1, nil)
	r := rs[0]
	tests := []struct {
		name      string
		path, key string
		body      any
		want      int
		wantField string
	}{
		{"ok", "/api/publish", testAPIKey, map[string]any{"channel": "user:1", "event": "e", "data": 1}, 202, ""},
		{"no key", "/api/publish", "", map[string]any{"channel": "user:1", "event": "e"}, 401, ""},
		{"wrong key", "/api/publish", "wrong-key-wrong-key", map[string]any{"channel": "user:1", "event": "e"}, 401, ""},
		{"bad json", "/api/publish", testAPIKey, `{"channel":`, 400, "body"},
		{"bad channel", "/api/publish", testAPIKey, map[string]any{"channel": "nope", "event": "e"}, 400, "channel"},
		{"bad event", "/api/publish", testAPIKey, map[string]any{"channel": "user:1", "event": "has space"}, 400, "event"},
		{"wrong type", "/api/publish", testAPIKey, `{"channel":5,"event":"e"}`, 400, "channel"},
		{"unknown field", "/api/publish", testAPIKey, `{"channel":"user:1","event":"e","dta":1}`, 400, "dta"},
		{"too large", "/api/publish", testAPIKey, map[string]any{"channel": "user:1", "event": "e", "data": strings.Repeat("x", 70000)}, 413, ""},
		{"batch ok", "/api/publish/batch", testAPIKey, map[string]any{"items": []any{
			map[string]any{"channel": "user:1", "event": "e"}, map[string]any{"channel": "public:x", "event": "e"}}}, 202, ""},
		{"batch bad item", "/api/publish/batch", testAPIKey, map[string]any{"items": []any{
			map[string]any{"channel": "user:1", "event": "e"}, map[string]any{"channel": "x", "event": "e"}}}, 400, "items[1].channel"},
		{"batch empty", "/api/publish/batch", testAPIKey, map[string]any{"items": []any{}}, 400, "items"},
	}
	for _, tt := range tests {
		st, body := r.api(t, "POST", tt.path, tt.key, tt.body)
		if st != tt.want {
			t.Errorf("%s: status %d, want %d (%v)", tt.name, st, tt.want, body)
			continue
		}
		if tt.wantField != "" {
			e, _ := body["error"].(map[string]any)
			if e["field"] != tt.wantField {
				t.Errorf("%s: error %v, want field %q", tt.name, e, tt.wantField)
			}
		}
	}
	st, body := r.api(t, "POST", "/api/publish", testAPIKey, map[string]any{"channel": "user:1", "event": "e"}, "Idempotency-Key", "k1")
	st2, body2 := r.api(t, "POST", "/api/publish", testAPIKey, map[string]any{"channel": "user:1", "event": "e"}, "Idempotency-Key", "k1")
	if st != 202 || st2 != 202 || body["id"] != body2["id"] {
		t.Errorf("idempotent publish: %d %v then %d %v, want the same id", st, body, st2, body2)
	}
	st3, body3 := r.api(t, "POST", "/api/publish", testAPIKey, map[string]any{"channel": "user:2", "event": "e"}, "Idempotency-Key", "k1")
	if e, _ := body3["error"].(map[string]any); st3 != 422 || e["code"] != "idempotency_conflict" {
		t.Errorf("key reused for another channel: %d %v, want 422 idempotency_conflict", st3, body3)
	}
}

func TestNoLeaksAfterClientsLeave(t *testing.T) {
	_, rs := cluster(t, 2, nil)
	sid := rs[0].newSession(t, "u")
	for round := range 3 {
		var cls []*client
		for i := range 20 {
			c := dial(t, rs[i%2].wsURL(""), bearerHeader(sid))
			c.nextOf("welcome")
			c.subscribe(fmt.Sprintf("public:room-%d", i%4))
			cls = append(cls, c)
		}
		for _, c := range cls {
			c.c.Close(websocket.StatusNormalClosure, "bye")
		}
		for _, r := range rs {
			eventually(t, fmt.Sprintf("round %d: %s back to zero", round, r.name), func() bool {
				return r.metric(t, "herald_connections") == 0 && r.metric(t, "herald_channels") == 0
			})
		}
	}
}
