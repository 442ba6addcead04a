package main

import (
	"fmt"
	"testing"

	"github.com/coder/websocket"
)

// eventIDs reads n event frames and returns their ids, failing on any
// other frame type in between.
func (cl *client) eventIDs(n int) []string {
	cl.t.Helper()
	var ids []string
	for len(ids) < n {
		f := cl.next()
		if f.str("type") != "event" {
			cl.t.Fatalf("got %v while waiting for event %d of %d", f, len(ids)+1, n)
		}
		ids = append(ids, f.str("id"))
	}
	return ids
}

func equalIDs(t *testing.T, what string, got, want []string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: got ids %v, want %v", what, got, want)
	}
}

func TestResume(t *testing.T) {
	for _, mode := range []string{"redis", "memory"} {
		t.Run(mode, func(t *testing.T) {
			r := modeReplica(t, mode, map[string]string{"HERALD_HISTORY_SIZE": "5"})
			sid := r.newSession(t, "u")

			// A client that drops before its first event resumes from the
			// welcome's last id and misses nothing.
			cl := dial(t, r.wsURL(""), bearerHeader(sid))
			w := cl.nextOf("welcome")
			if w.str("last") == "" {
				t.Fatalf("welcome %v lacks last", w)
			}
			cl.c.CloseNow()
			early := r.publish(t, "user:u", "n", -1)
			cl = dial(t, r.wsURL("?since="+w.str("last")), bearerHeader(sid))
			cl.nextOf("welcome")
			equalIDs(t, "published while the first socket was gone", cl.eventIDs(1), []string{early})
			cl.c.CloseNow()

			cl = dial(t, r.wsURL(""), bearerHeader(sid))
			cl.nextOf("welcome")
			first := r.publish(t, "user:u", "n", 0)
			equalIDs(t, "live", cl.eventIDs(1), []string{first})
			cl.c.Close(websocket.StatusNormalClosure, "")

			var missed []string
			for i := range 3 {
				missed = append(missed, r.publish(t, "user:u", "n", i+1))
			}
			cl = dial(t, r.wsURL("?since="+first), bearerHeader(sid))
			if w := cl.next(); w.str("type") != "welcome" || w["recovered"] != true {
				t.Fatalf("welcome %v, want recovered:true", w)
			}
			equalIDs(t, "missed on connect", cl.eventIDs(3), missed)
			live := r.publish(t, "user:u", "n", 4)
			equalIDs(t, "live after resume", cl.eventIDs(1), []string{live})

			// subscribe with since on a channel the connection lacks
			p1 := r.publish(t, "public:room", "n", 1)
			p2 := r.publish(t, "public:room", "n", 2)
			if f := cl.send("subscribe", ""); f == 0 {
				t.Fatal("unreachable")
			}
			cl.nextOf("error") // the empty channel above is a bad request
			cl.sendRaw(fmt.Appendf(nil, `{"type":"subscribe","ref":9,"channel":"public:room","since":%q}`, p1))
			if f := cl.next(); f.str("type") != "subscribed" || f["recovered"] != true {
				t.Fatalf("reply %v, want subscribed recovered:true", f)
			}
			equalIDs(t, "missed on subscribe", cl.eventIDs(1), []string{p2})

			// a gap larger than the history window is reported
			for i := range 7 {
				r.publish(t, "public:busy", "n", i)
			}
			cl.sendRaw(fmt.Appendf(nil, `{"type":"subscribe","ref":10,"channel":"public:busy","since":%q}`, p1))
			if f := cl.next(); f.str("type") != "subscribed" || f["recovered"] != false {
				t.Fatalf("reply %v, want subscribed recovered:false", f)
			}
			if got := len(cl.eventIDs(5)); got != 5 {
				t.Fatalf("got %d retained events, want 5", got)
			}
			cl.noEventBeforePong()

			if st, _ := dialStatus(t, r.wsURL("?since=yesterday"), bearerHeader(sid)); st != 400 {
				t.Errorf("bad since: %d, want 400", st)
			}
		})
	}
}
