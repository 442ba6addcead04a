package gateway

import (
	"fmt"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/session"
)

// TestSessionChecksArePacedAndBounded: sessions fall due once per
// interval, spread over it, at their expiry when that comes first, at most
// the budget per call and the most overdue first; a released session is
// never due again.
func TestSessionChecksArePacedAndBounded(t *testing.T) {
	l := newLiveSessions()
	now := time.Unix(1000, 0)
	every := 10 * time.Second
	far := now.Add(time.Hour).UnixMilli()
	var hashes []string
	for i := range 100 {
		hashes = append(hashes, l.add(session.Session{ID: fmt.Sprint("s", i), UserID: "u", ExpiresAt: far}, now, every))
	}
	soon := l.add(session.Session{ID: "expiring", UserID: "u", ExpiresAt: now.Add(time.Second).UnixMilli()}, now, every)
	l.add(session.Session{ID: "s0", UserID: "u", ExpiresAt: far}, now, every) // a second socket of s0

	if got := l.due(now, 1000, every); len(got) != 0 {
		t.Fatalf("%d sessions due at once, want none: checks spread over the interval", len(got))
	}
	found := false
	for _, s := range l.due(now.Add(time.Second), 1000, every) {
		found = found || s.hash == soon
	}
	if !found {
		t.Fatal("a session at its expiry is not due")
	}
	half := l.due(now.Add(every/2), 1000, every)
	if len(half) < 20 || len(half) > 80 {
		t.Errorf("%d of 100 due after half the interval, want about half", len(half))
	}
	l.release(hashes[1])
	rest := l.due(now.Add(every), 10, every) // budget: 10 per call
	if len(rest) != 10 {
		t.Fatalf("got %d, want the budget of 10", len(rest))
	}
	for i := 1; i < len(rest); i++ {
		if rest[i].next.Before(rest[i-1].next) && !rest[i-1].next.After(now.Add(every)) {
			t.Errorf("not the most overdue first")
		}
	}
	seen := map[string]int{}
	for step := 0; step < 20; step++ {
		for _, s := range l.due(now.Add(every+time.Duration(step)*time.Second), 1000, every) {
			seen[s.hash]++
		}
	}
	if seen[hashes[1]] != 0 {
		t.Error("a released session was checked")
	}
	if len(l.m) != 100 || len(l.queue) != 100 {
		t.Errorf("%d sessions, %d queued; want 100 and 100", len(l.m), len(l.queue))
	}
	l.release(hashes[0])
	if l.m[hashes[0]] == nil {
		t.Error("releasing one of two sockets forgot the session")
	}
}
