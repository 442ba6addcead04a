package main

// Tests of the delivery promise at its edges (issue 9): quiet channels,
// the instant between joining a channel and learning its last id,
// ownership at publish time, sessions the app extends, idempotency key
// scopes and bad bytes. Each runs against real sockets, in Redis mode and
// memory mode where both apply.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/heraldgw/herald"
	"github.com/heraldgw/herald/internal/redistest"
)

// modes runs fn against a replica in Redis mode and one in memory mode.
func modes(t *testing.T, env map[string]string, fn func(t *testing.T, r *replica, srv *redistest.Server)) {
	t.Run("redis", func(t *testing.T) {
		srv, rs := cluster(t, 1, env)
		fn(t, rs[0], srv)
	})
	t.Run("memory", func(t *testing.T) {
		fn(t, startReplica(t, "solo", env), nil)
	})
}

// TestQuietChannelsResumeRecovered: a client that resumes from the last id
// the server gave it, on a channel where nothing was published since (or
// ever), is told recovered:true, also once the history expired.
func TestQuietChannelsResumeRecovered(t *testing.T) {
	modes(t, map[string]string{"HERALD_HISTORY_TTL": "1s"}, func(t *testing.T, r *replica, srv *redistest.Server) {
		sid := r.newSession(t, "quiet")
		effect := "effect:" + uuid.NewString()

		cl := dial(t, r.wsURL(""), bearerHeader(sid))
		last := cl.nextOf("welcome").str("last")
		sub := cl.subscribe(effect)
		if sub.str("type") != "subscribed" || sub.str("last") == "" {
			t.Fatalf("subscribe %s: %v, want subscribed with last", effect, sub)
		}
		cl.c.CloseNow()

		resume := func(what, since, effectSince string) {
			t.Helper()
			cl := dial(t, r.wsURL("?since="+since), bearerHeader(sid))
			if w := cl.nextOf("welcome"); w["recovered"] != true {
				t.Fatalf("%s: welcome %v, want recovered:true", what, w)
			}
			cl.sendRaw(fmt.Appendf(nil, `{"type":"subscribe","ref":7,"channel":%q,"since":%q}`, effect, effectSince))
			if f := cl.nextOf("subscribed"); f["recovered"] != true {
				t.Fatalf("%s: %v, want recovered:true", what, f)
			}
			cl.noEventBeforePong()
			cl.c.CloseNow()
		}
		resume("nothing ever published", last, sub.str("last"))

		id := r.publish(t, "user:quiet", "n", 1)
		resume("since the newest event", id, sub.str("last"))

		// Once the history expired (its TTL is the point of this wait), the
		// newest id is still known.
		time.Sleep(1500 * time.Millisecond)
		resume("since the newest event, history expired", id, sub.str("last"))

		// And a client that really missed an expired event is told.
		cl = dial(t, r.wsURL("?since="+last), bearerHeader(sid))
		if w := cl.nextOf("welcome"); w["recovered"] != false {
			t.Fatalf("missed an expired event: welcome %v, want recovered:false", w)
		}
	})
}

// TestNoLossWhileConnecting: while a publisher sends thousands of events
// per second, 200 clients connect and subscribe; each must get every event
// above the last id it was given, exactly once and in order.
func TestNoLossWhileConnecting(t *testing.T) {
	modes(t, nil, func(t *testing.T, r *replica, srv *redistest.Server) {
		sid := r.newSession(t, "storm")
		hp, err := herald.NewHTTPPublisher("http://"+r.addr, testAPIKey, herald.HTTPConfig{})
		if err != nil {
			t.Fatal(err)
		}
		var pub herald.Publisher = hp
		if srv != nil {
			pub = herald.NewRedisPublisher(srv.Client(), herald.RedisConfig{})
		}
		channels := []string{"user:storm", "public:storm"}

		var mu sync.Mutex
		acked := map[string][]string{}
		ctx, stop := context.WithCancel(context.Background())
		published := make(chan struct{})
		go func() {
			defer close(published)
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for i := 0; ctx.Err() == nil; i++ {
				<-tick.C
				var msgs []herald.Message
				for _, ch := range channels {
					msgs = append(msgs, herald.Message{Channel: ch, Event: "n", Data: i})
				}
				ids, err := pub.PublishBatch(context.Background(), msgs) // 2 events per ms per channel pair
				if err != nil {
					t.Errorf("publish: %v", err)
					return
				}
				mu.Lock()
				for j, ch := range channels {
					acked[ch] = append(acked[ch], ids[j])
				}
				mu.Unlock()
			}
		}()

		type result struct {
			last map[string]string
			got  map[string][]string
		}
		results := make([]result, 200)
		var wg sync.WaitGroup
		for i := range results {
			wg.Go(func() {
				res := result{last: map[string]string{}, got: map[string][]string{}}
				cl := dial(t, r.wsURL(""), bearerHeader(sid))
				ref := cl.send("subscribe", "public:storm")
				for f := range cl.frames {
					switch f.str("type") {
					case "welcome":
						res.last["user:storm"] = f.str("last")
					case "subscribed":
						if int(f["ref"].(float64)) == ref {
							res.last["public:storm"] = f.str("last")
						}
					case "event":
						res.got[f.str("channel")] = append(res.got[f.str("channel")], f.str("id"))
					}
					if len(res.got["public:storm"]) >= 300 && len(res.got["user:storm"]) >= 300 {
						break
					}
				}
				cl.c.CloseNow()
				results[i] = res
			})
		}
		wg.Wait()
		stop()
		<-published

		mu.Lock()
		defer mu.Unlock()
		for i, res := range results {
			for _, ch := range channels {
				got := res.got[ch]
				last := res.last[ch]
				if last == "" {
					t.Fatalf("client %d: no last id for %s", i, ch)
				}
				want := idsAfter(acked[ch], last)
				if len(want) < len(got) {
					t.Fatalf("client %d %s: got %d events, only %d acked after %s", i, ch, len(got), len(want), last)
				}
				if fmt.Sprint(got) != fmt.Sprint(want[:len(got)]) {
					at := firstDiff(got, want)
					t.Fatalf("client %d %s (last %s): event %d is %s, want %s\nreplica log:\n%s", i, ch, last, at, got[at], want[at], r.notable())
				}
			}
		}
	})
}

// idsAfter returns the ids in acked (in publish order) that come after last.
func idsAfter(acked []string, last string) []string {
	for i, id := range acked {
		if compareIDs(id, last) > 0 {
			return acked[i:]
		}
	}
	return nil
}

func compareIDs(a, b string) int {
	var am, as, bm, bs uint64
	fmt.Sscanf(a, "%d-%d", &am, &as)
	fmt.Sscanf(b, "%d-%d", &bm, &bs)
	switch {
	case am != bm:
		return map[bool]int{true: -1, false: 1}[am < bm]
	case as != bs:
		return map[bool]int{true: -1, false: 1}[as < bs]
	}
	return 0
}

// TestOwnershipAtPublishTime: once an effect has an owner, only the
// owner's sockets receive its events and history; others are unsubscribed
// with a reason, and refusals do not say whether someone owns the id.
func TestOwnershipAtPublishTime(t *testing.T) {
	modes(t, map[string]string{"HERALD_DEV": "true", "HERALD_DEV_FORCE": "true"}, func(t *testing.T, r *replica, srv *redistest.Server) {
		alice := dial(t, r.wsURL(""), bearerHeader(r.newSession(t, "alice")))
		mallory := dial(t, r.wsURL(""), bearerHeader(r.newSession(t, "mallory")))
		alice.nextOf("welcome")
		mallory.nextOf("welcome")

		// A completion that names its user makes that user the owner.
		effect := uuid.NewString()
		for _, cl := range []*client{alice, mallory} {
			if f := cl.subscribe("effect:" + effect); f.str("type") != "subscribed" {
				t.Fatalf("subscribe: %v", f)
			}
		}
		id := r.publish(t, "effect:"+effect, "effect.complete", map[string]any{"userEffectId": effect, "userId": "alice"})
		if f := alice.nextOf("event"); f.str("id") != id {
			t.Fatalf("owner got %v, want event %s", f, id)
		}
		f := mallory.next()
		if f.str("type") != "unsubscribed" || f.str("channel") != "effect:"+effect || f.str("reason") == "" {
			t.Fatalf("other user got %v, want unsubscribed with a reason", f)
		}
		mallory.noEventBeforePong()
		refusedOwned := mallory.subscribe("effect:" + effect)
		mallory.sendRaw(fmt.Appendf(nil, `{"type":"subscribe","ref":99,"channel":"effect:%s","since":"0-0"}`, effect))
		refusedResume := mallory.nextOf("error")
		refusedName := mallory.subscribe("effect:not-a-uuid")
		for _, f := range []frame{refusedOwned, refusedResume} {
			if f.str("type") != "error" || f.str("code") != refusedName.str("code") || f.str("message") != refusedName.str("message") {
				t.Fatalf("refusal %v differs from the refusal of an unknown id %v", f, refusedName)
			}
		}

		// An owner written by the app after others subscribed.
		effect2 := uuid.NewString()
		for _, cl := range []*client{alice, mallory} {
			if f := cl.subscribe("effect:" + effect2); f.str("type") != "subscribed" {
				t.Fatalf("subscribe: %v", f)
			}
		}
		if srv == nil {
			return // memory mode has no app-written owner keys
		}
		srv.Client().Set(context.Background(), "effect:"+effect2+":owner", "alice", time.Hour)
		id2 := r.publish(t, "effect:"+effect2, "progress", map[string]any{"pct": 50})
		if f := alice.nextOf("event"); f.str("id") != id2 {
			t.Fatalf("owner got %v, want %s", f, id2)
		}
		if f := mallory.next(); f.str("type") != "unsubscribed" || f.str("reason") == "" {
			t.Fatalf("other user got %v, want unsubscribed", f)
		}
	})
}

// TestExtendedSessionsStayOpen: an app that moves a session's expiresAt
// forward keeps its sockets; moving it back closes them with 4001.
func TestExtendedSessionsStayOpen(t *testing.T) {
	srv, rs := cluster(t, 1, map[string]string{"HERALD_SESSION_CHECK": "100ms"})
	r, rdb := rs[0], srv.Client()
	ctx := context.Background()
	write := func(expires time.Time) {
		b, _ := json.Marshal(map[string]any{"userId": "ext", "email": "e@x.test", "plan": "pro", "expiresAt": expires.UnixMilli()})
		if err := rdb.Set(ctx, "session:ext-session-id-0123456789", b, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	first := time.Now().Add(1500 * time.Millisecond)
	write(first)
	cl := dial(t, r.wsURL(""), bearerHeader("ext-session-id-0123456789"))
	cl.nextOf("welcome")
	write(time.Now().Add(time.Hour))
	for time.Now().Before(first.Add(500 * time.Millisecond)) {
		cl.noEventBeforePong()             // fails if the socket was closed
		time.Sleep(200 * time.Millisecond) // below the client message rate
	}
	write(time.Now().Add(-time.Second))
	if code := cl.closeCode(); code != 4001 {
		t.Fatalf("close code %d, want 4001", code)
	}
}

// TestIdempotencyKeyScopes: keys of different API keys do not collide, a
// caller cannot reach the classic conversions' keys, and a key's name never
// changes its lifetime.
func TestIdempotencyKeyScopes(t *testing.T) {
	srv, rs := cluster(t, 1, map[string]string{"HERALD_API_KEYS": testAPIKey + ",other-api-key-0123456789"})
	r := rs[0]
	ctx := context.Background()
	rdb := srv.Client()
	post := func(apiKey, idem, channel string) (int, map[string]any) {
		return r.api(t, "POST", "/api/publish", apiKey, map[string]any{"channel": channel, "event": "n", "data": 1}, "Idempotency-Key", idem)
	}
	st1, b1 := post(testAPIKey, "job-1", "public:a")
	st2, b2 := post("other-api-key-0123456789", "job-1", "public:b")
	if st1 != 202 || st2 != 202 || b1["id"] == nil || b2["id"] == nil {
		t.Fatalf("same key from two API keys: %d %v, %d %v; want both published", st1, b1, st2, b2)
	}

	// A caller pre-claiming what looks like a classic conversion's key
	// suppresses nothing.
	sid := r.newSession(t, "cl")
	cl := dial(t, r.wsURL(""), bearerHeader(sid))
	cl.nextOf("welcome")
	payload := fmt.Sprintf(`{"userEffectId":%q,"resultUrl":"https://x.test/r.png","timestamp":1,"userId":"cl"}`, uuid.NewString())
	for _, key := range classicLookalikes(payload) {
		post(testAPIKey, key, "user:cl")
	}
	for range len(classicLookalikes(payload)) {
		cl.nextOf("event")
	}
	rdb.Publish(ctx, "effect:complete", payload)
	if f := cl.nextOf("event"); f.str("event") != "effect.complete" {
		t.Fatalf("got %v, want the classic completion", f)
	}

	// An "auto:" key lives as long as any other.
	post(testAPIKey, "auto:mine", "public:c")
	keys, _ := rdb.Keys(ctx, "*auto:mine*").Result()
	for _, k := range keys {
		if ttl := rdb.PTTL(ctx, k).Val(); ttl < 5*time.Minute {
			t.Errorf("key %s lives %v, want the history TTL", k, ttl)
		}
	}
	if st, body := post(testAPIKey, "bad key", "public:c"); st != 400 || !strings.Contains(fmt.Sprint(body), "Idempotency-Key") {
		t.Errorf("key with a space: %d %v, want 400 naming Idempotency-Key", st, body)
	}
}

// classicLookalikes are idempotency keys a caller could send hoping to hit
// the classic conversion's own key for payload.
func classicLookalikes(payload string) []string {
	sum := sha256hex(payload)
	return []string{"classic:" + sum, sum}
}

// TestInvalidUTF8Refused: data with invalid UTF-8 never reaches a socket.
func TestInvalidUTF8Refused(t *testing.T) {
	srv, rs := cluster(t, 1, nil)
	r := rs[0]
	ctx := context.Background()
	bad := "{\"s\":\"\xff\xfe\"}"
	st, body := r.api(t, "POST", "/api/publish", testAPIKey, `{"channel":"public:x","event":"n","data":`+bad+`}`)
	if st != 400 || !strings.Contains(fmt.Sprint(body), "data") {
		t.Errorf("HTTP publish of invalid UTF-8: %d %v, want 400 naming data", st, body)
	}
	p := herald.NewRedisPublisher(srv.Client(), herald.RedisConfig{})
	if _, err := p.Publish(ctx, "public:x", "n", json.RawMessage(bad)); err == nil {
		t.Error("Go package published invalid UTF-8")
	}

	sid := r.newSession(t, "utf")
	cl := dial(t, r.wsURL(""), bearerHeader(sid))
	cl.nextOf("welcome")
	effect := uuid.NewString()
	srv.Client().Publish(ctx, "effect:complete", fmt.Sprintf("{\"userEffectId\":%q,\"resultUrl\":\"\xff\",\"timestamp\":1,\"userId\":\"utf\"}", effect))
	eventually(t, "classic invalid counted", func() bool { return r.metric(t, `herald_classic_messages_total{outcome="invalid"}`) >= 1 })
	cl.noEventBeforePong()
	if !strings.Contains(r.logs.String(), "UTF-8") {
		t.Error("no warning about invalid UTF-8 in the log")
	}
}

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
