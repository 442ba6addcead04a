package gateway

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/hub"
)

func TestParseCursor(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want []string // ids by slot; nil: malformed
	}{
		{"", 2, []string{"", ""}},
		{"1", 2, []string{"", ""}},
		{"1.a-1", 1, []string{"10-1"}},
		{"1..z-0", 3, []string{"", "35-0", ""}},
		{"1.lq2x5kq0-3..lq2x5kzz-0", 3, []string{"1702420406568-3", "", "1702420406927-0"}},
		{"1.3w5e11264sgsf-3w5e11264sgsf", 1, []string{"18446744073709551615-18446744073709551615"}},
		{"1.a-1.b-2", 1, nil},         // more slots than the stream has
		{"2.a-1", 1, nil},             // another version
		{"1a-1", 1, nil},              // no dot
		{"1.a", 1, nil},               // no seq
		{"1.-1", 1, nil},              // no ms
		{"1.a-", 1, nil},              // empty seq
		{"1.A-1", 1, nil},             // upper case
		{"1.a-1 ", 1, nil},            // space
		{"1.+1-1", 1, nil},            // a sign
		{"1.a_1-1", 1, nil},           // underscore
		{"1.a-1-1", 1, nil},           // two dashes
		{"1.3w5e11264sgsg-0", 1, nil}, // past 2^64
		{"1." + strings.Repeat("0", 14) + "-0", 1, nil},
		{"1" + strings.Repeat(".", 40), 1, nil}, // longer than one slot can be
	}
	for _, tt := range tests {
		got, err := parseCursor(tt.in, tt.n)
		if tt.want == nil {
			if err == nil {
				t.Errorf("parseCursor(%q, %d) = %v, want an error", tt.in, tt.n, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseCursor(%q, %d): %v", tt.in, tt.n, err)
			continue
		}
		var ids []string
		for _, s := range got {
			ids = append(ids, s.id())
		}
		if strings.Join(ids, ",") != strings.Join(tt.want, ",") {
			t.Errorf("parseCursor(%q, %d) = %q, want %q", tt.in, tt.n, ids, tt.want)
		}
	}
}

// FuzzParseCursor: no header panics the parser, and whatever it accepts
// is written back as a cursor that parses to the same slots.
func FuzzParseCursor(f *testing.F) {
	for _, s := range []string{"", "1", "1.a-1", "1..z-0.", "1.lq2x5kq0-3..lq2x5kzz-0", "1.3w5e11264sgsf-0", "9", "1.-"} {
		f.Add(s, 3)
	}
	f.Fuzz(func(t *testing.T, s string, n int) {
		n = max(0, n%200)
		slots, err := parseCursor(s, n)
		if err != nil {
			return
		}
		if len(slots) != n {
			t.Fatalf("parseCursor(%q, %d): %d slots", s, n, len(slots))
		}
		c := streamCursor{channels: make([]string, n), slots: slots}
		back, err := parseCursor(string(c.appendTo(nil)), n)
		if err != nil {
			t.Fatalf("%q written back as %q: %v", s, c.appendTo(nil), err)
		}
		for i := range slots {
			if back[i] != slots[i] {
				t.Fatalf("%q: slot %d is %v, written back and read %v", s, i, slots[i], back[i])
			}
		}
	})
}

// TestStreamCursorNote: the cursor follows the frames as they are written.
func TestStreamCursorNote(t *testing.T) {
	c := streamCursor{channels: []string{"user:u", "public:a", "public:b", "public:a"}, slots: make([]cursorSlot, 4)}
	event := func(ch, id string) []byte {
		return events.AppendFrame(nil, id, events.Publication{Channel: ch, Event: "n", Data: []byte(`{"x":"id: 9-9\n"}`)})
	}
	steps := []struct {
		frame  []byte
		withID bool
		want   string
	}{
		{welcomeFrame("c", "u", "n", 25, "", "100-0"), true, "1.2s-0"},
		{appendReply(nil, "subscribed", 1, "public:a", "true", "200-1"), true, "1.2s-0.5k-1..5k-1"},
		{appendError(nil, 2, "public:b", "forbidden", "no"), false, "1.2s-0.5k-1..5k-1"},
		{event("public:a", "201-0"), true, "1.2s-0.5l-0..5l-0"},
		// Listed twice: the reply names the newest id, which may be ahead
		// of what was written; the channel keeps its own.
		{appendReply(nil, "subscribed", 4, "public:a", "true", "300-0"), true, "1.2s-0.5l-0..5l-0"},
		{event("user:u", "101-5"), true, "1.2t-5.5l-0..5l-0"},
		{event("user:u", "101-4"), true, "1.2t-5.5l-0..5l-0"}, // never back
		{gapFrame("public:a"), false, "1.2t-5.5l-0..5l-0"},
		{evictedFrame("public:a"), false, "1.2t-5.5l-0..5l-0"},
		{appendReply(nil, "subscribed", 3, "public:b", "false", ""), true, "1.2t-5.5l-0..5l-0"},
		{event("public:b", "7-0"), true, "1.2t-5.5l-0.7-0.5l-0"},
	}
	for i, s := range steps {
		if got := c.note(s.frame); got != s.withID {
			t.Errorf("step %d (%s): with id %v, want %v", i, s.frame, got, s.withID)
		}
		if got := string(c.appendTo(nil)); got != s.want {
			t.Errorf("step %d (%s): cursor %q, want %q", i, s.frame, got, s.want)
		}
	}
}

// TestWriteEvent: frames become SSE events whose data, joined by the
// client, is the frame again (line breaks of event data become LF).
func TestWriteEvent(t *testing.T) {
	tests := []struct{ frame, want string }{
		{`{"type":"pong","ref":1}`, "data: {\"type\":\"pong\",\"ref\":1}\n\n"},
		{"{\"a\":\r\n1,\r\"b\":\n2}", "data: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"},
		{"{\"a\":1}\n", "data: {\"a\":1}\ndata: \n\n"},
		{"\r\n\r\n", "data: \ndata: \ndata: \n\n"},
	}
	for _, tt := range tests {
		w := httptest.NewRecorder()
		if err := writeEvent(w, nil, []byte(tt.frame)); err != nil {
			t.Fatal(err)
		}
		if got := w.Body.String(); got != tt.want {
			t.Errorf("writeEvent(%q) wrote %q, want %q", tt.frame, got, tt.want)
		}
	}
	w := httptest.NewRecorder()
	writeEvent(w, []byte("id: 1.a-1\n"), []byte(`{}`))
	if got := w.Body.String(); got != "id: 1.a-1\ndata: {}\n\n" {
		t.Errorf("with an id: %q", got)
	}
	if got := string(closeFrame(hub.CloseRevoked, `say "bye"`)); got != `{"type":"close","code":4001,"reason":"say \"bye\""}` {
		t.Errorf("close frame %s", got)
	}
}

// TestStreamHeartbeatsAndLeaves: an idle stream gets a heartbeat every
// ping period, an event a client can see; a stream whose client goes away
// leaves the hub and gives its user's slot back.
func TestStreamHeartbeatsAndLeaves(t *testing.T) {
	ts := newTestServerWith(t, map[string]string{"HERALD_MAX_CONNS_PER_USER": "1"}, hub.Config{PingInterval: 20 * time.Millisecond})
	sess, err := ts.sessions.Create(context.Background(), "u", "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// open opens a stream, waiting while the user's only slot is taken.
	open := func() *http.Response {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			req, _ := http.NewRequest("GET", ts.url+"/sse", nil)
			req.Header.Set("Authorization", "Bearer "+sess.ID)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode == http.StatusOK {
				return resp
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusTooManyRequests || time.Now().After(deadline) {
				t.Fatalf("stream refused: %d", resp.StatusCode)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for range 3 { // one at a time: each takes the user's only slot
		resp := open()
		br := bufio.NewReader(resp.Body)
		pings := 0
		for pings < 2 {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("stream ended: %v", err)
			}
			if line == "event: ping\n" {
				pings++
			}
		}
		resp.Body.Close()
		deadline := time.Now().Add(5 * time.Second)
		for ts.hub.Conns() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d connections left after the client went away", ts.hub.Conns())
			}
			time.Sleep(time.Millisecond)
		}
	}
}
