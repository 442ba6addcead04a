package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/heraldgw/herald/internal/events"
)

// sseEvent is one event of an SSE stream, as EventSource dispatches it.
type sseEvent struct {
	id   string // its id: line; "" when it had none
	name string // its event: line; "" is a message
	data string
}

// readEvent reads the next event of an SSE stream, following the parsing
// rules of the HTML standard for the fields the gateway writes.
func readEvent(br *bufio.Reader) (sseEvent, error) {
	var ev sseEvent
	var data []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if data == nil {
				ev = sseEvent{} // nothing to dispatch
				continue
			}
			ev.data = strings.Join(data, "\n")
			return ev, nil
		}
		if strings.HasPrefix(line, ":") {
			continue // a comment
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			ev.id = value
		case "event":
			ev.name = value
		case "data":
			data = append(data, value)
		}
	}
}

// stream is a real SSE client: one GET /sse, its events read as they come.
type stream struct {
	t      *testing.T
	resp   *http.Response
	events chan sseEvent
	closed chan struct{}
	err    error  // the read error once closed (io.EOF: the response ended)
	lastID string // the id of the last event next returned that had one, as EventSource keeps it
	pings  int    // heartbeats seen by next
}

// sseURL is the /sse URL of r with channels and more query parameters
// ("name", "value", …).
func (r *replica) sseURL(channels []string, kv ...string) string {
	q := url.Values{}
	for _, ch := range channels {
		q.Add("channel", ch)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	u := r.url("/sse")
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

func streamRequest(t *testing.T, u string, hdr http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	return resp
}

// openStream opens a stream and fails the test unless it is one.
func openStream(t *testing.T, u string, hdr http.Header) *stream {
	t.Helper()
	resp := streamRequest(t, u, hdr)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("GET %s: %d %s %q, want a 200 event stream", u, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	s := &stream{t: t, resp: resp, events: make(chan sseEvent, 4096), closed: make(chan struct{})}
	go func() {
		defer close(s.closed)
		br := bufio.NewReader(resp.Body)
		for {
			ev, err := readEvent(br)
			if err != nil {
				s.err = err
				return
			}
			s.events <- ev
		}
	}()
	t.Cleanup(s.drop)
	return s
}

// drop ends the stream from the client's side, as a lost connection does.
func (s *stream) drop() {
	s.resp.Body.Close()
	<-s.closed
}

// streamStatus makes a connect that must be refused and returns its status.
func streamStatus(t *testing.T, u string, hdr http.Header) (int, http.Header) {
	t.Helper()
	resp := streamRequest(t, u, hdr)
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatalf("GET %s: a stream, want a refusal", u)
	}
	return resp.StatusCode, resp.Header
}

// next returns the next frame, skipping heartbeats, and fails the test
// after a generous wait or when the stream ends.
func (s *stream) next() (frame, sseEvent) {
	s.t.Helper()
	for {
		var ev sseEvent
		select {
		case ev = <-s.events:
		case <-s.closed:
			select {
			case ev = <-s.events:
			default:
				s.t.Fatalf("stream ended while waiting for a frame: %v", s.err)
			}
		case <-time.After(10 * time.Second):
			s.t.Fatal("no frame within 10s")
		}
		if ev.id != "" {
			s.lastID = ev.id
		}
		if ev.name == "ping" {
			s.pings++
			continue
		}
		var f frame
		if err := json.Unmarshal([]byte(ev.data), &f); err != nil {
			s.t.Fatalf("data %q is not a JSON frame: %v", ev.data, err)
		}
		return f, ev
	}
}

// nextOf skips frames until one of type typ arrives.
func (s *stream) nextOf(typ string) frame {
	s.t.Helper()
	for {
		if f, _ := s.next(); f.str("type") == typ {
			return f
		}
	}
}

// ended waits for the response to end, failing on any frame but heartbeats.
func (s *stream) ended() {
	s.t.Helper()
	for {
		select {
		case ev := <-s.events:
			if ev.name != "ping" {
				s.t.Fatalf("got %q, want the end of the stream", ev.data)
			}
		case <-s.closed:
			if len(s.events) == 0 {
				if !errors.Is(s.err, io.EOF) && !errors.Is(s.err, io.ErrUnexpectedEOF) {
					s.t.Errorf("stream ended with %v", s.err)
				}
				return
			}
		case <-time.After(15 * time.Second):
			s.t.Fatal("stream not ended within 15s")
		}
	}
}

// closeFrame waits for the close frame and the end of the stream, and
// returns the close code.
func (s *stream) closeFrame() (int, string) {
	s.t.Helper()
	f := s.nextOf("close")
	s.ended()
	code, _ := f["code"].(float64)
	return int(code), f.str("reason")
}

// eventsUntil reads frames until every channel of want has delivered its
// last id, and returns the event ids read per channel. Any frame but
// events is a failure.
func (s *stream) eventsUntil(want map[string][]string) map[string][]string {
	s.t.Helper()
	return s.collect(map[string][]string{}, want)
}

// collect is eventsUntil adding to the ids in got.
func (s *stream) collect(got, want map[string][]string) map[string][]string {
	s.t.Helper()
	done := func() bool {
		for ch, ids := range want {
			g := got[ch]
			if len(ids) > 0 && (len(g) == 0 || g[len(g)-1] != ids[len(ids)-1]) {
				return false
			}
		}
		return true
	}
	for !done() {
		f, ev := s.next()
		if f.str("type") != "event" {
			s.t.Fatalf("got %v while waiting for events", f)
		}
		if ev.id == "" {
			s.t.Fatalf("event %v came without an id line", f)
		}
		got[f.str("channel")] = append(got[f.str("channel")], f.str("id"))
	}
	return got
}

// joined reads frames until the subscribed replies of channels (refs 1 to
// n, in order) have come, checks their recovered flag, and returns the ids
// of the events that came meanwhile, per channel: a channel's replay
// follows its reply, and the personal channel's follows the welcome.
func (s *stream) joined(channels []string, recovered bool) map[string][]string {
	s.t.Helper()
	got := map[string][]string{}
	for i, ch := range channels {
		for {
			f, _ := s.next()
			if f.str("type") == "event" {
				got[f.str("channel")] = append(got[f.str("channel")], f.str("id"))
				continue
			}
			if r, _ := f["ref"].(float64); f.str("type") != "subscribed" || int(r) != i+1 || f.str("channel") != ch || f["recovered"] != recovered {
				s.t.Fatalf("got %v, want subscribed ref %d for %s, recovered:%v", f, i+1, ch, recovered)
			}
			break
		}
	}
	return got
}

// reply reads the next frame and checks that it answers ref.
func (s *stream) reply(ref int, typ, channel string) frame {
	s.t.Helper()
	f, ev := s.next()
	if r, _ := f["ref"].(float64); f.str("type") != typ || int(r) != ref || f.str("channel") != channel {
		s.t.Fatalf("got %v, want %s ref %d for %s", f, typ, ref, channel)
	}
	if typ == "subscribed" && ev.id == "" {
		s.t.Fatalf("%v came without an id line", f)
	}
	return f
}

// cursorSlot writes an event id as a slot of a resume cursor (PROTOCOL
// §3a): both parts in base 36.
func cursorSlot(t *testing.T, id string) string {
	t.Helper()
	ms, seq, err := events.ParseID(id)
	if err != nil {
		t.Fatal(err)
	}
	return strconv.FormatUint(ms, 36) + "-" + strconv.FormatUint(seq, 36)
}

// TestSSEResume: a stream gets the same frames as a socket, each event
// with an id; dropped and reopened with the last id it saw (as
// EventSource does), it gets exactly what every channel missed, once, in
// order, recovered, also for channels that had no event yet; a new URL
// with a cursor in lastEventId (as herald.js makes) resumes too.
func TestSSEResume(t *testing.T) {
	for _, mode := range []string{"redis", "memory"} {
		t.Run(mode, func(t *testing.T) {
			r := modeReplica(t, mode, map[string]string{"HERALD_HISTORY_SIZE": "5"})
			sid := r.newSession(t, "u")
			auth := bearerHeader(sid)
			effect := "effect:" + uuid.NewString()
			chans := []string{"public:a", effect, "public:quiet"}
			u := r.sseURL(chans)

			s := openStream(t, u, auth)
			w, ev := s.next()
			if w.str("type") != "welcome" || w.str("user") != "u" || w.str("node") != r.name || w.str("last") == "" || ev.id == "" {
				t.Fatalf("first frame %v (id %q), want a welcome with last and an id", w, ev.id)
			}
			for i, ch := range chans {
				if f := s.reply(i+1, "subscribed", ch); f["recovered"] != true || f.str("last") == "" {
					t.Fatalf("reply %v, want recovered:true with last", f)
				}
			}
			// Live: one event on each channel but the quiet one.
			live := map[string][]string{
				"user:u":   {r.publish(t, "user:u", "n", 1)},
				"public:a": {r.publish(t, "public:a", "n", 1)},
				effect:     {r.publish(t, effect, "n", 1)},
			}
			if got := s.eventsUntil(live); fmt.Sprint(got) != fmt.Sprint(live) {
				t.Fatalf("live: got %v, want %v", got, live)
			}

			// Dropped; every channel gets events meanwhile.
			s.drop()
			missed := map[string][]string{}
			for i := range 2 {
				for _, ch := range []string{"user:u", "public:a", effect, "public:quiet"} {
					missed[ch] = append(missed[ch], r.publish(t, ch, "n", i))
				}
			}
			s2 := openStream(t, u, http.Header{"Authorization": auth["Authorization"], "Last-Event-ID": {s.lastID}})
			if w := s2.nextOf("welcome"); w["recovered"] != true {
				t.Fatalf("welcome %v, want recovered:true", w)
			}
			if got := s2.collect(s2.joined(chans, true), missed); fmt.Sprint(got) != fmt.Sprint(missed) {
				t.Fatalf("after Last-Event-ID: got %v, want exactly %v", got, missed)
			}
			next := map[string][]string{}
			for _, ch := range []string{"user:u", "public:a", effect, "public:quiet"} {
				next[ch] = []string{r.publish(t, ch, "n", "live")}
			}
			if got := s2.eventsUntil(next); fmt.Sprint(got) != fmt.Sprint(next) {
				t.Fatalf("live after resume: got %v, want %v", got, next)
			}

			// The same cursor as lastEventId on the same URL (no header).
			s2.drop()
			gone := r.publish(t, effect, "n", "gone")
			s3 := openStream(t, r.sseURL(chans, "lastEventId", s2.lastID), auth)
			if w := s3.nextOf("welcome"); w["recovered"] != true {
				t.Fatalf("welcome %v, want recovered:true", w)
			}
			want := map[string][]string{effect: {gone}}
			if got := s3.collect(s3.joined(chans, true), want); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("lastEventId: got %v, want only %v", got, want)
			}

			// A new channel set, as herald.js asks after a subscribe: the
			// cursor it builds from the ids it has, by the new positions.
			s3.drop()
			after := r.publish(t, "public:a", "n", "after")
			cur := "1." + cursorSlot(t, next["user:u"][0]) + ".." + cursorSlot(t, next["public:a"][0])
			s4 := openStream(t, r.sseURL([]string{"public:new", "public:a"}, "lastEventId", cur), auth)
			s4.nextOf("welcome")
			want = map[string][]string{"public:a": {after}}
			if got := s4.collect(s4.joined([]string{"public:new", "public:a"}, true), want); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("new channel set: got %v, want only %s", got, after)
			}

			// Beyond the history window (5 events): recovered:false and
			// what is left.
			s4.drop()
			for i := range 7 {
				r.publish(t, "public:a", "n", i)
			}
			s5 := openStream(t, r.sseURL([]string{"public:new", "public:a"}), http.Header{"Authorization": auth["Authorization"], "Last-Event-ID": {s4.lastID}})
			s5.nextOf("welcome")
			s5.reply(1, "subscribed", "public:new")
			if f := s5.reply(2, "subscribed", "public:a"); f["recovered"] != false {
				t.Fatalf("reply %v, want recovered:false", f)
			}
			for range 5 {
				if f, _ := s5.next(); f.str("type") != "event" || f.str("channel") != "public:a" {
					t.Fatalf("got %v, want one of the 5 retained events", f)
				}
			}

			// Cursors that do not fit the stream are refused before it starts.
			for _, bad := range []string{"garbage", "2.1-0", "1.1-0.1-0.1-0", "1.A!-0", "1." + strings.Repeat("z", 14) + "-0"} {
				hdr := http.Header{"Authorization": auth["Authorization"], "Last-Event-ID": {bad}}
				if st, _ := streamStatus(t, r.sseURL([]string{"public:a"}), hdr); st != http.StatusBadRequest {
					t.Errorf("Last-Event-ID %q: %d, want 400", bad, st)
				}
			}
			if st, _ := streamStatus(t, r.sseURL(nil, "lastEventId", "nope"), auth); st != http.StatusBadRequest {
				t.Errorf("lastEventId nope: %d, want 400", st)
			}
		})
	}
}

// TestSSEChannelRules: the channels of a stream are authorized as
// subscribe frames are; each refused one gets the socket's error frame,
// with its position as ref and its name, and the stream goes on.
func TestSSEChannelRules(t *testing.T) {
	srv, rs := cluster(t, 1, nil)
	r := rs[0]
	sid := r.newSession(t, "u")
	owned := uuid.NewString()
	srv.Client().Set(context.Background(), "effect:"+owned+":owner", "someone-else", time.Minute)
	chans := []string{"user:other", "effect:not-a-uuid", "effect:" + owned, "nosuch:x", "bad name", "user:u", "public:a", "public:a"}
	s := openStream(t, r.sseURL(chans), bearerHeader(sid))
	s.nextOf("welcome")
	want := []struct{ typ, code, channel string }{
		{"error", "forbidden", "user:other"},
		{"error", "forbidden", "effect:not-a-uuid"},
		{"error", "forbidden", "effect:" + owned},
		{"error", "not_found", "nosuch:x"},
		{"error", "bad_request", ""}, // an invalid name is not echoed
		{"subscribed", "", "user:u"}, // the user's channel, joined already
		{"subscribed", "", "public:a"},
		{"subscribed", "", "public:a"}, // listed twice
	}
	for i, w := range want {
		f := s.reply(i+1, w.typ, w.channel)
		if f.str("code") != w.code {
			t.Errorf("channel %d: %v, want code %q", i+1, f, w.code)
		}
	}
	id := r.publish(t, "public:a", "n", 1)
	if got := s.eventsUntil(map[string][]string{"public:a": {id}}); len(got["public:a"]) != 1 {
		t.Errorf("a channel listed twice delivered %v, want its event once", got)
	}
	// Too many channels for one stream.
	many := make([]string, 129)
	for i := range many {
		many[i] = fmt.Sprintf("public:c%d", i)
	}
	if st, _ := streamStatus(t, r.sseURL(many), bearerHeader(sid)); st != http.StatusBadRequest {
		t.Errorf("129 channels: %d, want 400", st)
	}
}

// TestSSEDataWithLineBreaks: event data is the publisher's JSON, line
// breaks (JSON whitespace) included; each line becomes a data line and the
// client's joining of them is the same JSON.
func TestSSEDataWithLineBreaks(t *testing.T) {
	r := startReplica(t, "solo", nil)
	sid := r.newSession(t, "u")
	s := openStream(t, r.sseURL(nil), bearerHeader(sid))
	s.nextOf("welcome")
	st, body := r.api(t, "POST", "/api/publish", testAPIKey, `{"channel":"user:u","event":"n","data":{`+"\r\n"+`"a": 1,`+"\r"+`"b": [2,`+"\n"+`3]}}`)
	if st != http.StatusAccepted {
		t.Fatalf("publish: %d %v", st, body)
	}
	f := s.nextOf("event")
	if d, _ := json.Marshal(f["data"]); string(d) != `{"a":1,"b":[2,3]}` {
		t.Errorf("data %s, want {\"a\":1,\"b\":[2,3]}", d)
	}
}

// TestSSERefusals: /sse refuses exactly as /ws does, with the same
// statuses, and a cross-origin page from the allow-list may read the
// stream.
func TestSSERefusals(t *testing.T) {
	srv, rs := cluster(t, 1, map[string]string{"HERALD_ALLOWED_ORIGINS": "app.example.com"})
	r := rs[0]
	sid := r.newSession(t, "u")
	expired := "expired-session-0001"
	past := time.Now().Add(-time.Minute).UnixMilli()
	srv.Client().Set(context.Background(), "session:"+expired, fmt.Sprintf(`{"userId":"u","email":"e","plan":"p","expiresAt":%d}`, past), time.Minute)
	_, tb := r.api(t, "POST", "/api/tickets", sid, nil)
	ticket := tb["ticket"].(string)
	s := openStream(t, r.sseURL(nil, "ticket", ticket), nil) // first use works
	s.nextOf("welcome")

	tests := []struct {
		name string
		url  string
		hdr  http.Header
		want int
	}{
		{"no credentials", r.sseURL(nil), nil, 401},
		{"unknown session", r.sseURL(nil), bearerHeader("nope"), 401},
		{"expired session", r.sseURL(nil), bearerHeader(expired), 401},
		{"used ticket", r.sseURL(nil, "ticket", ticket), nil, 401},
		{"cookie with unknown session", r.sseURL(nil), http.Header{"Cookie": {"sid=nope"}}, 401},
		{"foreign origin", r.sseURL(nil), http.Header{"Authorization": {"Bearer " + sid}, "Origin": {"https://evil.test"}}, 403},
		{"null origin", r.sseURL(nil), http.Header{"Authorization": {"Bearer " + sid}, "Origin": {"null"}}, 403},
		{"another site without CORS", r.sseURL(nil), http.Header{"Cookie": {"sid=" + sid}, "Sec-Fetch-Site": {"cross-site"}}, 403},
	}
	for _, tt := range tests {
		if got, _ := streamStatus(t, tt.url, tt.hdr); got != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, got, tt.want)
		}
	}

	s = openStream(t, r.sseURL(nil), http.Header{"Cookie": {"sid=" + sid}, "Origin": {"https://app.example.com"}, "Sec-Fetch-Site": {"cross-site"}})
	s.nextOf("welcome")
	h := s.resp.Header
	for k, v := range map[string]string{
		"Access-Control-Allow-Origin": "https://app.example.com", "Access-Control-Allow-Credentials": "true",
		"X-Accel-Buffering": "no", "Cache-Control": "no-store",
	} {
		if h.Get(k) != v {
			t.Errorf("%s: %q, want %q", k, h.Get(k), v)
		}
	}
	s = openStream(t, r.sseURL(nil), http.Header{"Cookie": {"sid=" + sid}, "Sec-Fetch-Site": {"same-origin"}})
	s.nextOf("welcome")

	// The preflight of a cross-origin reconnect with Last-Event-ID.
	pre := func(origin string) *http.Response {
		req, _ := http.NewRequest("OPTIONS", r.sseURL(nil), nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "GET")
		req.Header.Set("Access-Control-Request-Headers", "last-event-id")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := pre("https://app.example.com"); resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Headers") != "Last-Event-ID" {
		t.Errorf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	if resp := pre("https://evil.test"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign preflight: %d, want 403", resp.StatusCode)
	}
}

// TestSSELimits: streams count against the same limits as sockets: the
// user's connections (429), the replica's capacity (503) and the connects
// of a client IP, which sockets and streams share (429).
func TestSSELimits(t *testing.T) {
	r := startReplica(t, "solo", map[string]string{
		"HERALD_CONNECT_LIMIT": "5", "HERALD_CONNECT_WINDOW": "1h",
		"HERALD_MAX_CONNS_PER_USER": "2", "HERALD_MAX_CONNS": "3",
	})
	u, v := bearerHeader(r.newSession(t, "u")), bearerHeader(r.newSession(t, "v"))
	s1 := openStream(t, r.sseURL(nil), u) // connect 1
	s1.nextOf("welcome")
	openStream(t, r.sseURL(nil), u).nextOf("welcome") // 2
	st, h := streamStatus(t, r.sseURL(nil), u)        // 3
	if st != http.StatusTooManyRequests || h.Get("X-RateLimit-Limit") != "2" || h.Get("Retry-After") == "" {
		t.Errorf("third stream of a user: %d %v, want 429 with X-RateLimit-Limit 2", st, h)
	}
	openStream(t, r.sseURL(nil), v).nextOf("welcome") // 4
	if st, h := streamStatus(t, r.sseURL(nil), v); st != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
		t.Errorf("beyond HERALD_MAX_CONNS: %d, want 503 with Retry-After", st)
	}
	s1.drop()
	eventually(t, "a free connection", func() bool { return r.metric(t, "herald_connections") == 2 })
	c := dial(t, r.wsURL(""), v) // 5: a socket
	c.nextOf("welcome")
	c.c.CloseNow()
	eventually(t, "a free connection", func() bool { return r.metric(t, "herald_connections") == 2 })
	if st, _ := streamStatus(t, r.sseURL(nil), v); st != http.StatusTooManyRequests {
		t.Errorf("sixth connect of the IP: %d, want 429", st)
	}
}

// TestSSERevocation: revoking a session on any replica ends its streams
// with a close frame 4001 before the response ends.
func TestSSERevocation(t *testing.T) {
	for _, mode := range []string{"redis", "memory"} {
		t.Run(mode, func(t *testing.T) {
			var a, b *replica
			if mode == "redis" {
				_, rs := cluster(t, 2, nil) // the revocation crosses replicas
				a, b = rs[0], rs[1]
			} else {
				a = startReplica(t, "solo", nil)
				b = a
			}
			sid := a.newSession(t, "u")
			s := openStream(t, b.sseURL([]string{"public:a"}), bearerHeader(sid))
			s.nextOf("subscribed")
			if st, _ := a.api(t, "DELETE", "/api/sessions/"+sid, testAPIKey, nil); st != http.StatusNoContent {
				t.Fatalf("revoke: %d", st)
			}
			if code, reason := s.closeFrame(); code != 4001 || reason != "session revoked" {
				t.Errorf("close %d %q, want 4001 session revoked", code, reason)
			}
			if st, _ := streamStatus(t, b.sseURL(nil), bearerHeader(sid)); st != http.StatusUnauthorized {
				t.Errorf("stream with the revoked session: %d, want 401", st)
			}
		})
	}
}

// TestSSEDrain: a gateway that stops closes its streams with 1012, as its
// sockets, and run returns without waiting for them any longer.
func TestSSEDrain(t *testing.T) {
	_, rs := cluster(t, 2, nil)
	r := rs[0]
	sid := r.newSession(t, "u")
	var ss []*stream
	for range 3 {
		s := openStream(t, r.sseURL([]string{"public:a"}), bearerHeader(sid))
		s.nextOf("subscribed")
		ss = append(ss, s)
	}
	ws := dial(t, r.wsURL(""), bearerHeader(sid))
	ws.nextOf("welcome")
	stopped := make(chan error, 1)
	go func() { stopped <- r.stop() }()
	for i, s := range ss {
		if code, _ := s.closeFrame(); code != 1012 {
			t.Errorf("stream %d closed with %d, want 1012", i, code)
		}
	}
	if code := ws.closeCode(); code != 1012 {
		t.Errorf("socket closed with %d, want 1012", code)
	}
	if err := <-stopped; err != nil {
		t.Errorf("run returned %v, want nil", err)
	}
	if strings.Contains(r.logs.String(), "http shutdown") {
		t.Errorf("the HTTP server did not shut down cleanly:\n%s", r.notable())
	}
	// Resume on the other replica.
	s := openStream(t, rs[1].sseURL([]string{"public:a"}), http.Header{"Authorization": {"Bearer " + sid}, "Last-Event-ID": {ss[0].lastID}})
	if w := s.nextOf("welcome"); w["recovered"] != true || w.str("node") != "r1" {
		t.Errorf("welcome %v, want recovered:true on r1", w)
	}
}

// TestSSESlowConsumerResumes: a stream that stops reading is closed with
// 4009 without holding anyone up, tells so once it reads again, and
// resumes exactly from the last id it got.
func TestSSESlowConsumerResumes(t *testing.T) {
	srv, rs := cluster(t, 1, map[string]string{"HERALD_HISTORY_SIZE": "3000"})
	r := rs[0]
	sid := r.newSession(t, "u")
	resp := streamRequest(t, r.sseURL(nil), bearerHeader(sid))
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	acked := stallUntilSlow(t, srv, r)
	// Now it reads: what reached it, then the close frame and the end.
	br := bufio.NewReader(resp.Body)
	var got []string
	var lastID string
	code := 0
	for {
		ev, err := readEvent(br)
		if err != nil {
			break
		}
		if ev.id != "" {
			lastID = ev.id
		}
		var f frame
		json.Unmarshal([]byte(ev.data), &f)
		switch f.str("type") {
		case "event":
			got = append(got, f.str("id"))
		case "close":
			code = int(f["code"].(float64))
		}
	}
	if code != 4009 {
		t.Errorf("close frame %d, want 4009", code)
	}
	if len(got) == 0 || len(got) >= len(acked) {
		t.Fatalf("read %d of %d events before the close", len(got), len(acked))
	}
	acked = append(acked, r.publish(t, "user:u", "after", nil))
	s := openStream(t, r.sseURL(nil), http.Header{"Authorization": {"Bearer " + sid}, "Last-Event-ID": {lastID}})
	if w := s.nextOf("welcome"); w["recovered"] != true {
		t.Fatalf("welcome %v, want recovered:true", w)
	}
	got = s.collect(map[string][]string{"user:u": got}, map[string][]string{"user:u": acked})["user:u"]
	if !slices.Equal(got, acked) {
		t.Errorf("after resume: %d events, want the %d published in order (first difference at %d)", len(got), len(acked), firstDiff(got, acked))
	}
}

// TestSSEStreamsLeaveTheHTTPConnectionCap: an SSE stream is a long-lived
// connection like a socket: it never counts toward HERALD_MAX_HTTP_CONNS,
// so many streams neither crowd out plain requests nor get closed as the
// stalest of them.
func TestSSEStreamsLeaveTheHTTPConnectionCap(t *testing.T) {
	r := startReplica(t, "solo", map[string]string{"HERALD_MAX_HTTP_CONNS": "4"})
	sid := bearerHeader(r.newSession(t, "u"))
	var streams []*stream
	for range 8 {
		s := openStream(t, r.sseURL(nil), sid)
		s.nextOf("welcome")
		streams = append(streams, s)
	}
	for range 10 { // plain requests, each on a connection of its own
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get(r.url("/healthz"))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("/healthz with 8 streams open: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	id := r.publish(t, "user:u", "n", 1)
	for i, s := range streams {
		if f := s.nextOf("event"); f.str("id") != id {
			t.Fatalf("stream %d: got %v, want event %s: it was closed", i, f, id)
		}
	}
}
