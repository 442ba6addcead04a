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

// TestSessionCheckedAtExpiryAfterEarlierChecks: a session that expires
// after its first check is checked again at its expiresAt (within the
// tick), not a whole interval after the check before.
func TestSessionCheckedAtExpiryAfterEarlierChecks(t *testing.T) {
	l := newLiveSessions()
	now := time.Unix(1000, 0)
	every := 30 * time.Second
	tick := time.Second
	// Expiring between one and two intervals after connect: the first
	// check, at a random point of the first interval, comes before it.
	expires := map[string]time.Time{}
	for i := range 20 {
		at := now.Add(every + every/2 + time.Duration(i)*time.Second/2)
		h := l.add(session.Session{ID: fmt.Sprint("s", i), UserID: "u", ExpiresAt: at.UnixMilli()}, now, every)
		expires[h] = at
	}
	checks := map[string][]time.Time{}
	for at := now; !at.After(now.Add(3 * every)); at = at.Add(tick) {
		for _, s := range l.due(at, 1000, every) {
			checks[s.hash] = append(checks[s.hash], at)
		}
	}
	for h, exp := range expires {
		var before, atExpiry bool
		for _, c := range checks[h] {
			before = before || c.Before(exp)
			atExpiry = atExpiry || !c.Before(exp) && c.Sub(exp) < tick
		}
		if !before {
			t.Fatalf("session %s: no check before its expiry %v: %v", h, exp, checks[h])
		}
		if !atExpiry {
			t.Errorf("session %s expiring at %v: checked at %v, want one within a tick of its expiry", h, exp.Sub(now), offsets(checks[h], now))
		}
	}
}

func offsets(ts []time.Time, from time.Time) []time.Duration {
	var out []time.Duration
	for _, t := range ts {
		out = append(out, t.Sub(from))
	}
	return out
}
