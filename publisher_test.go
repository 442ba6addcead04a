package herald_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

// names are the key names of a publisher with the default (empty) prefix.
var names = events.Names{}

// TestPublishers runs one suite against both publishers; the HTTP one goes
// through a fake gateway that publishes with a RedisPublisher, so both end
// in the same Redis and are checked the same way.
func TestPublishers(t *testing.T) {
	for _, kind := range []string{"redis", "http"} {
		t.Run(kind, func(t *testing.T) {
			t.Run("Publish", func(t *testing.T) { testPublish(t, newEnv(t, kind)) })
			t.Run("PublishBatch", func(t *testing.T) { testBatch(t, newEnv(t, kind)) })
			t.Run("Idempotency", func(t *testing.T) { testIdempotency(t, newEnv(t, kind)) })
			t.Run("Invalid", func(t *testing.T) { testInvalid(t, newEnv(t, kind)) })
			t.Run("EffectComplete", func(t *testing.T) { testEffectComplete(t, newEnv(t, kind)) })
		})
	}
}

// env is one publisher under test and the Redis it ends in.
type env struct {
	pub herald.Publisher
	rdb *redis.Client
}

func newEnv(t *testing.T, kind string) env {
	t.Helper()
	rdb := redistest.Start(t).Client()
	var pub herald.Publisher = herald.NewRedisPublisher(rdb, herald.RedisConfig{})
	if kind == "http" {
		g := startGateway(t, "test-key", pub)
		hp, err := herald.NewHTTPPublisher(g.URL, "test-key", herald.HTTPConfig{})
		if err != nil {
			t.Fatal(err)
		}
		pub = hp
	}
	return env{pub: pub, rdb: rdb}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// subscribe subscribes a raw go-redis client to the pub/sub channel of
// channel and returns once Redis confirmed it.
func subscribe(t *testing.T, rdb *redis.Client, channel string) <-chan *redis.Message {
	t.Helper()
	ps := rdb.Subscribe(ctxT(t), names.PubSub(channel))
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.Receive(ctxT(t)); err != nil {
		t.Fatalf("subscribe %s: %v", channel, err)
	}
	return ps.Channel()
}

// receive waits for the next frame on ch.
func receive(t *testing.T, ch <-chan *redis.Message) string {
	t.Helper()
	select {
	case m := <-ch:
		return m.Payload
	case <-time.After(5 * time.Second):
		t.Fatal("no frame received within 5s")
		return ""
	}
}

// history returns the events of channel's history, oldest first.
func history(t *testing.T, rdb *redis.Client, channel string) []events.Frame {
	t.Helper()
	return historyOf(t, rdb, names, channel)
}

func historyOf(t *testing.T, rdb *redis.Client, names events.Names, channel string) []events.Frame {
	t.Helper()
	r, err := events.NewRedisLog(rdb, names, events.LogConfig{}).Range(ctxT(t), channel, "")
	if err != nil {
		t.Fatalf("read history of %s: %v", channel, err)
	}
	out := make([]events.Frame, len(r.Events))
	for i, e := range r.Events {
		if err := json.Unmarshal(e.Frame, &out[i]); err != nil {
			t.Fatalf("history frame %s: %v", e.Frame, err)
		}
	}
	return out
}

// wantFrame is the event frame of PROTOCOL §4, built by hand so the test
// does not trust the code under test to build it.
func wantFrame(t *testing.T, channel, id, event, data string) string {
	t.Helper()
	ms, _, ok := strings.Cut(id, "-")
	if !ok {
		t.Fatalf("event id %q: want {ms}-{seq}", id)
	}
	return fmt.Sprintf(`{"type":"event","channel":"%s","id":"%s","event":"%s","data":%s,"ts":%s}`, channel, id, event, data, ms)
}

func checkHistory(t *testing.T, rdb *redis.Client, channel string, want ...[3]string) {
	t.Helper()
	got := history(t, rdb, channel)
	if len(got) != len(want) {
		t.Fatalf("history of %s: got %d entries, want %d: %v", channel, len(got), len(want), got)
	}
	for i, w := range want { // id, event, data
		g := got[i]
		if g.ID != w[0] || g.Event != w[1] || string(g.Data) != w[2] {
			t.Errorf("history of %s [%d]: got %s e=%v d=%s, want %s e=%s d=%s", channel, i, g.ID, g.Event, g.Data, w[0], w[1], w[2])
		}
	}
}

func testPublish(t *testing.T, e env) {
	frames := subscribe(t, e.rdb, "user:42")
	before := time.Now().UnixMilli()
	id, err := e.pub.Publish(ctxT(t), "user:42", "greeting", map[string]any{"text": "<hi & bye>", "n": 1})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	ms, _, err := events.ParseID(id)
	if err != nil {
		t.Fatalf("Publish returned id %q: %v", id, err)
	}
	if int64(ms) < before-1000 || int64(ms) > time.Now().UnixMilli()+1000 {
		t.Errorf("id %s: time %d not near now %d", id, ms, before)
	}
	const data = `{"n":1,"text":"<hi & bye>"}` // map keys sorted, no HTML escaping
	checkHistory(t, e.rdb, "user:42", [3]string{id, "greeting", data})
	if got, want := receive(t, frames), wantFrame(t, "user:42", id, "greeting", data); got != want {
		t.Errorf("frame:\n got %s\nwant %s", got, want)
	}

	// Raw JSON passes through untouched (but for the compaction JSON
	// encoding does on the way to a gateway); nil is null.
	id2, err := e.pub.Publish(ctxT(t), "user:42", "raw", json.RawMessage(`[1,"two",{"3":null}]`))
	if err != nil {
		t.Fatalf("Publish raw: %v", err)
	}
	id3, err := e.pub.Publish(ctxT(t), "user:42", "bytes", []byte(`"s"`))
	if err != nil {
		t.Fatalf("Publish bytes: %v", err)
	}
	id4, err := e.pub.Publish(ctxT(t), "user:42", "nil", nil)
	if err != nil {
		t.Fatalf("Publish nil: %v", err)
	}
	if events.CompareIDs(id, id2) >= 0 || events.CompareIDs(id2, id3) >= 0 || events.CompareIDs(id3, id4) >= 0 {
		t.Errorf("ids not increasing: %s %s %s %s", id, id2, id3, id4)
	}
	checkHistory(t, e.rdb, "user:42",
		[3]string{id, "greeting", data},
		[3]string{id2, "raw", `[1,"two",{"3":null}]`},
		[3]string{id3, "bytes", `"s"`},
		[3]string{id4, "nil", `null`})
	for _, want := range []string{
		wantFrame(t, "user:42", id2, "raw", `[1,"two",{"3":null}]`),
		wantFrame(t, "user:42", id3, "bytes", `"s"`),
		wantFrame(t, "user:42", id4, "nil", `null`),
	} {
		if got := receive(t, frames); got != want {
			t.Errorf("frame:\n got %s\nwant %s", got, want)
		}
	}
}

func testBatch(t *testing.T, e env) {
	a, b := subscribe(t, e.rdb, "public:news"), subscribe(t, e.rdb, "user:7")
	ids, err := e.pub.PublishBatch(ctxT(t), []herald.Message{
		{Channel: "public:news", Event: "headline", Data: "one"},
		{Channel: "user:7", Event: "note", Data: 2},
		{Channel: "public:news", Event: "headline", Data: "three"},
	})
	if err != nil {
		t.Fatalf("PublishBatch: %v", err)
	}
	if len(ids) != 3 {
		t.Fatalf("PublishBatch: got %d ids, want 3", len(ids))
	}
	checkHistory(t, e.rdb, "public:news", [3]string{ids[0], "headline", `"one"`}, [3]string{ids[2], "headline", `"three"`})
	checkHistory(t, e.rdb, "user:7", [3]string{ids[1], "note", `2`})
	if got, want := receive(t, a), wantFrame(t, "public:news", ids[0], "headline", `"one"`); got != want {
		t.Errorf("frame:\n got %s\nwant %s", got, want)
	}
	if got, want := receive(t, a), wantFrame(t, "public:news", ids[2], "headline", `"three"`); got != want {
		t.Errorf("frame:\n got %s\nwant %s", got, want)
	}
	if got, want := receive(t, b), wantFrame(t, "user:7", ids[1], "note", `2`); got != want {
		t.Errorf("frame:\n got %s\nwant %s", got, want)
	}

	if _, err := e.pub.PublishBatch(ctxT(t), nil); !errors.Is(err, herald.ErrNoMessages) {
		t.Errorf("empty batch: got %v, want ErrNoMessages", err)
	}
}

func testIdempotency(t *testing.T, e env) {
	key := herald.IdempotencyKey("job:1732600000000-0")
	first, err := e.pub.Publish(ctxT(t), "user:42", "done", 1, key)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	again, err := e.pub.Publish(ctxT(t), "user:42", "done", 1, key)
	if err != nil {
		t.Fatalf("repeat Publish: %v", err)
	}
	if again != first {
		t.Errorf("repeat returned id %s, want the first call's %s", again, first)
	}
	checkHistory(t, e.rdb, "user:42", [3]string{first, "done", "1"})

	// Another key publishes again; so does no key.
	other, err := e.pub.Publish(ctxT(t), "user:42", "done", 1, herald.IdempotencyKey("job:other"))
	if err != nil {
		t.Fatalf("Publish with another key: %v", err)
	}
	plain, err := e.pub.Publish(ctxT(t), "user:42", "done", 1)
	if err != nil {
		t.Fatalf("Publish without key: %v", err)
	}
	checkHistory(t, e.rdb, "user:42", [3]string{first, "done", "1"}, [3]string{other, "done", "1"}, [3]string{plain, "done", "1"})

	// A batch repeat returns all the first ids.
	msgs := []herald.Message{{Channel: "user:1", Event: "x"}, {Channel: "user:2", Event: "x"}}
	ids, err := e.pub.PublishBatch(ctxT(t), msgs, herald.IdempotencyKey("batch-1"))
	if err != nil {
		t.Fatalf("PublishBatch: %v", err)
	}
	ids2, err := e.pub.PublishBatch(ctxT(t), msgs, herald.IdempotencyKey("batch-1"))
	if err != nil {
		t.Fatalf("repeat PublishBatch: %v", err)
	}
	if fmt.Sprint(ids2) != fmt.Sprint(ids) {
		t.Errorf("repeat batch: got ids %v, want %v", ids2, ids)
	}
	checkHistory(t, e.rdb, "user:2", [3]string{ids[1], "x", "null"})

	// Keys that would not survive as a header or key are refused up front.
	for _, bad := range []string{"has space", "new\nline", strings.Repeat("k", 201), "ünïcode"} {
		_, err := e.pub.Publish(ctxT(t), "user:42", "done", 1, herald.IdempotencyKey(bad))
		var fe *herald.FieldError
		if !errors.As(err, &fe) || fe.Field != "idempotencyKey" {
			t.Errorf("key %q: got %v, want a FieldError on idempotencyKey", bad, err)
		}
	}
}

func testInvalid(t *testing.T, e env) {
	for _, tc := range []struct {
		name      string
		msgs      []herald.Message
		wantField string
	}{
		{"bad channel chars", []herald.Message{{Channel: "user:4 2", Event: "x"}}, "channel"},
		{"unknown channel kind", []herald.Message{{Channel: "admin:1", Event: "x"}}, "channel"},
		{"classic ingress channel", []herald.Message{{Channel: "effect:complete", Event: "x"}}, "channel"},
		{"empty channel", []herald.Message{{Channel: "", Event: "x"}}, "channel"},
		{"long channel", []herald.Message{{Channel: "user:" + strings.Repeat("1", 124), Event: "x"}}, "channel"},
		{"bad event", []herald.Message{{Channel: "user:1", Event: "a b"}}, "event"},
		{"bad raw data", []herald.Message{{Channel: "user:1", Event: "x", Data: json.RawMessage(`{`)}}, "data"},
		{"unencodable data", []herald.Message{{Channel: "user:1", Event: "x", Data: make(chan int)}}, "data"},
		{"second of batch", []herald.Message{{Channel: "user:1", Event: "x"}, {Channel: "nope", Event: "x"}}, "items[1].channel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if len(tc.msgs) == 1 {
				m := tc.msgs[0]
				_, err = e.pub.Publish(ctxT(t), m.Channel, m.Event, m.Data)
			} else {
				_, err = e.pub.PublishBatch(ctxT(t), tc.msgs)
			}
			var fe *herald.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v, want a *herald.FieldError", err)
			}
			if fe.Field != tc.wantField {
				t.Errorf("got field %q, want %q (%v)", fe.Field, tc.wantField, err)
			}
		})
	}
	// Nothing was written, not even the valid first message of the batch.
	if n, err := e.rdb.DBSize(ctxT(t)).Result(); err != nil || n != 0 {
		t.Errorf("keys after refused publishes: got %d (%v), want 0", n, err)
	}
}

func testEffectComplete(t *testing.T, e env) {
	user, effect := subscribe(t, e.rdb, "user:42"), subscribe(t, e.rdb, "effect:0b7e4c1a-9f51-4b5e-8d8c-2f0f6b3f8a11")
	ec := herald.EffectComplete{
		UserID:       "42",
		UserEffectID: "0b7e4c1a-9f51-4b5e-8d8c-2f0f6b3f8a11",
		ResultURL:    "https://cdn.example/results/0b7e.png?w=1&h=2",
		Timestamp:    time.UnixMilli(1732600000123),
	}
	ids, err := herald.PublishEffectComplete(ctxT(t), e.pub, ec, herald.IdempotencyKey("job:42"))
	if err != nil {
		t.Fatalf("PublishEffectComplete: %v", err)
	}
	if len(ids) != 2 {
		t.Fatalf("got %d ids, want 2", len(ids))
	}
	// The classic JSON, byte for byte as PROTOCOL §1 lays it out.
	const data = `{"userEffectId":"0b7e4c1a-9f51-4b5e-8d8c-2f0f6b3f8a11","resultUrl":"https://cdn.example/results/0b7e.png?w=1&h=2","timestamp":1732600000123,"userId":"42"}`
	checkHistory(t, e.rdb, "effect:"+ec.UserEffectID, [3]string{ids[0], "effect.complete", data})
	checkHistory(t, e.rdb, "user:42", [3]string{ids[1], "effect.complete", data})
	// An owned effect's pub/sub message names its owner before the frame,
	// so that gateways deliver it to the owner's sockets only.
	if got, want := receive(t, effect), "42\n"+wantFrame(t, "effect:"+ec.UserEffectID, ids[0], "effect.complete", data); got != want {
		t.Errorf("frame:\n got %s\nwant %s", got, want)
	}
	if got, want := receive(t, user), wantFrame(t, "user:42", ids[1], "effect.complete", data); got != want {
		t.Errorf("frame:\n got %s\nwant %s", got, want)
	}
	// The classic parser reads the data back into the same publications.
	pubs, err := events.ParseClassic([]byte(data))
	if err != nil || len(pubs) != 2 || pubs[0].Channel != "effect:"+ec.UserEffectID || pubs[1].Channel != "user:42" {
		t.Errorf("ParseClassic of the data: got %v, %v", pubs, err)
	}

	// Repeat with the same key: same ids, nothing new.
	again, err := herald.PublishEffectComplete(ctxT(t), e.pub, ec, herald.IdempotencyKey("job:42"))
	if err != nil || fmt.Sprint(again) != fmt.Sprint(ids) {
		t.Errorf("repeat: got %v, %v; want %v", again, err, ids)
	}
	checkHistory(t, e.rdb, "user:42", [3]string{ids[1], "effect.complete", data})

	// Without a user: one event, no userId in the data.
	anon := herald.EffectComplete{UserEffectID: "e-2", ResultURL: "u", Timestamp: time.UnixMilli(5)}
	ids, err = herald.PublishEffectComplete(ctxT(t), e.pub, anon)
	if err != nil || len(ids) != 1 {
		t.Fatalf("without user: got %v, %v; want one id", ids, err)
	}
	checkHistory(t, e.rdb, "effect:e-2", [3]string{ids[0], "effect.complete", `{"userEffectId":"e-2","resultUrl":"u","timestamp":5}`})

	// With a kind: "kind" after the classic fields.
	kind := herald.EffectComplete{UserEffectID: "e-4", ResultURL: "u", Timestamp: time.UnixMilli(6), Kind: "blur"}
	ids, err = herald.PublishEffectComplete(ctxT(t), e.pub, kind)
	if err != nil || len(ids) != 1 {
		t.Fatalf("with kind: got %v, %v; want one id", ids, err)
	}
	checkHistory(t, e.rdb, "effect:e-4", [3]string{ids[0], "effect.complete", `{"userEffectId":"e-4","resultUrl":"u","timestamp":6,"kind":"blur"}`})

	// A zero timestamp means now.
	before := time.Now().UnixMilli()
	ids, err = herald.PublishEffectComplete(ctxT(t), e.pub, herald.EffectComplete{UserEffectID: "e-3"})
	if err != nil {
		t.Fatalf("zero timestamp: %v", err)
	}
	var c struct{ Timestamp int64 }
	if err := json.Unmarshal(history(t, e.rdb, "effect:e-3")[0].Data, &c); err != nil {
		t.Fatal(err)
	}
	if c.Timestamp < before || c.Timestamp > time.Now().UnixMilli() {
		t.Errorf("zero Timestamp: got %d, want now (%d…)", c.Timestamp, before)
	}

	for _, bad := range []herald.EffectComplete{
		{UserID: "42"},
		{UserEffectID: "has space"},
		{UserEffectID: "ok", UserID: "bad/user"},
	} {
		var fe *herald.FieldError
		if _, err := herald.PublishEffectComplete(ctxT(t), e.pub, bad); !errors.As(err, &fe) {
			t.Errorf("%+v: got %v, want a FieldError", bad, err)
		}
	}
}

func TestConstantsMatchTheGateway(t *testing.T) {
	if herald.EffectCompleteEvent != events.EffectComplete {
		t.Errorf("EffectCompleteEvent %q, gateway's %q", herald.EffectCompleteEvent, events.EffectComplete)
	}
	if herald.UserChannel("7") != "user:7" || herald.EffectChannel("e") != "effect:e" {
		t.Errorf("channel helpers: %s %s", herald.UserChannel("7"), herald.EffectChannel("e"))
	}
}

func TestRedisPublisherConfig(t *testing.T) {
	rdb := redistest.Start(t).Client()
	p := herald.NewRedisPublisher(rdb, herald.RedisConfig{HistorySize: 2, HistoryTTL: time.Minute, KeyPrefix: "app1:"})
	prefixed := events.Names{Prefix: "app1:"}
	ps := rdb.Subscribe(ctxT(t), prefixed.PubSub("user:9"))
	defer ps.Close()
	if _, err := ps.Receive(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 3 {
		id, err := p.Publish(ctxT(t), "user:9", "n", i)
		if err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
		ids = append(ids, id)
	}
	key := prefixed.History("user:9")
	if !strings.HasPrefix(key, "app1:herald:{h") {
		t.Fatalf("history key %q", key)
	}
	got := historyOf(t, rdb, prefixed, "user:9")
	if len(got) != 2 || got[0].ID != ids[1] || got[1].ID != ids[2] {
		t.Errorf("history with size 2: got %v, want the last two of %v", got, ids)
	}
	// The history lives at least one TTL after the last publish (its TTL
	// is refreshed once per TTL, to two); the channel's record of its
	// newest id outlives it (24 h by default).
	if ttl := rdb.PTTL(ctxT(t), key).Val(); ttl <= time.Minute || ttl > 2*time.Minute {
		t.Errorf("history key TTL: got %v, want (1m, 2m]", ttl)
	}
	if ttl := rdb.PTTL(ctxT(t), prefixed.Record("user:9")).Val(); ttl <= time.Hour {
		t.Errorf("record key TTL: got %v, want about a day", ttl)
	}
	if n := rdb.Exists(ctxT(t), names.History("user:9")).Val(); n != 0 {
		t.Errorf("unprefixed history exists")
	}
	select {
	case m := <-ps.Channel():
		if !strings.Contains(m.Payload, `"id":"`+ids[0]+`"`) {
			t.Errorf("frame on prefixed channel: got %s, want id %s", m.Payload, ids[0])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no frame on the prefixed pub/sub channel")
	}
}

func TestRedisPublisherRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	defer rdb.Close()
	srv.Kill()
	_, err := herald.NewRedisPublisher(rdb, herald.RedisConfig{}).Publish(ctxT(t), "user:1", "x", nil)
	if err == nil {
		t.Fatal("Publish with Redis down: got nil error")
	}
	var fe *herald.FieldError
	if errors.As(err, &fe) {
		t.Errorf("Redis down reported as bad input: %v", err)
	}
}

// TestRedisPublisherRetriesThroughARestart publishes while Redis is down
// and comes back: the call that spans the restart succeeds once, and a
// call made while Redis stays down fails loudly.
func TestRedisPublisherRetriesThroughARestart(t *testing.T) {
	srv := redistest.Start(t)
	p := herald.NewRedisPublisher(srv.Client(), herald.RedisConfig{})
	srv.Kill()
	down, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := p.Publish(down, "user:r", "e", nil); err == nil {
		t.Fatal("publish with Redis down: got nil error, want a loud failure")
	}
	srv.Restart()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, err := p.Publish(ctx, "user:r", "e", nil)
	if err != nil {
		t.Fatalf("publish after restart: %v", err)
	}
	if h := history(t, srv.Client(), "user:r"); len(h) != 1 || h[0].ID != id {
		t.Errorf("history has %v, want exactly %s", h, id)
	}
}
