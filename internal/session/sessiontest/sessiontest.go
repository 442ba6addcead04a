// Package sessiontest is the conformance suite of session.Store: every
// implementation runs Run, so that Redis and Memory agree.
package sessiontest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/session"
)

// NewStore makes a store for one test. Its expiry decisions must use now,
// which the suite moves. Every store made for the same t must share one
// backend, as replicas on one Redis do: what one creates, redeems or revokes
// the others see. A single-node store may return the same store again for
// the same t. Stores for different tests may share a backend too: the
// suite uses fresh ids and runs its subtests one at a time.
type NewStore func(t *testing.T, now func() time.Time) session.Store

// wait bounds every wait for something asynchronous. It is a failure
// deadline, never a pause: nothing in the suite sleeps.
const wait = 10 * time.Second

// Run runs the conformance suite against the stores newStore makes.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, newStore NewStore)
	}{
		{"CreateGet", testCreateGet},
		{"CreateInvalid", testCreateInvalid},
		{"GetUnknown", testGetUnknown},
		{"Expired", testExpired},
		{"Revoke", testRevoke},
		{"RevokeUnknown", testRevokeUnknown},
		{"RevokeReachesEveryWatch", testRevokeEveryWatch},
		{"WatchReturnsWhenDone", testWatchReturns},
		{"Ticket", testTicket},
		{"TicketConcurrentRedeem", testTicketConcurrent},
		{"TicketOfRevokedSession", testTicketRevoked},
		{"TicketOfExpiredSession", testTicketExpired},
		{"Alive", testAlive},
		{"TwoStores", testTwoStores},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newStore) })
	}
}

// Clock is a fake clock for stores under test. Its zero value is not
// usable: NewClock starts it at the real time, so that Redis's own key
// lifetimes (real time) and expiresAt (this clock) agree until it is moved.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock at the current real time.
func NewClock() *Clock { return &Clock{now: time.Now()} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func setup(t *testing.T, newStore NewStore) (session.Store, *Clock) {
	clk := NewClock()
	return newStore(t, clk.Now), clk
}

func create(t *testing.T, st session.Store, user string, ttl time.Duration) session.Session {
	t.Helper()
	s, err := st.Create(t.Context(), user, user+"@example.com", "pro", ttl)
	if err != nil {
		t.Fatalf("Create(%q): %v", user, err)
	}
	return s
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

func testCreateGet(t *testing.T, newStore NewStore) {
	st, clk := setup(t, newStore)
	ctx := t.Context()
	s, err := st.Create(ctx, "u-1", "a@b.c", "pro", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	want := session.Session{ID: s.ID, UserID: "u-1", Email: "a@b.c", Plan: "pro",
		ExpiresAt: clk.Now().Add(time.Hour).UnixMilli()}
	if s != want {
		t.Fatalf("Create: got %+v, want %+v", s, want)
	}
	if len(s.ID) < 22 { // 128 bits in base64
		t.Fatalf("session id has %d characters, too few to be unguessable", len(s.ID))
	}
	got, err := st.Get(ctx, s.ID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got != want {
		t.Fatalf("Get: got %+v, want %+v", got, want)
	}
	if s2 := create(t, st, "u-1", time.Hour); s2.ID == s.ID {
		t.Fatal("two sessions got the same id")
	}
}

func testCreateInvalid(t *testing.T, newStore NewStore) {
	st, _ := setup(t, newStore)
	for _, tc := range []struct {
		user  string
		ttl   time.Duration
		field string
	}{
		{"", time.Hour, "userId"},
		{"has space", time.Hour, "userId"},
		{"u-1", 0, "ttl"},
		{"u-1", -time.Second, "ttl"},
	} {
		_, err := st.Create(t.Context(), tc.user, "", "", tc.ttl)
		var fe *events.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("Create(%q, ttl %v): got error %v, want a FieldError on %s", tc.user, tc.ttl, err, tc.field)
		}
	}
}

func testGetUnknown(t *testing.T, newStore NewStore) {
	st, _ := setup(t, newStore)
	for _, id := range []string{"", "no-such-session", create(t, st, "u-1", time.Hour).ID + "x"} {
		_, err := st.Get(t.Context(), id)
		wantErr(t, "Get(unknown)", err, session.ErrNotFound)
	}
}

func testExpired(t *testing.T, newStore NewStore) {
	st, clk := setup(t, newStore)
	ctx := t.Context()
	s := create(t, st, "u-1", time.Minute)

	clk.Advance(time.Minute - time.Millisecond)
	if _, err := st.Get(ctx, s.ID); err != nil {
		t.Fatalf("Get 1ms before expiresAt: %v", err)
	}
	clk.Advance(time.Millisecond)
	_, err := st.Get(ctx, s.ID)
	wantErr(t, "Get at expiresAt", err, session.ErrExpired)
	alive, err := st.Alive(ctx, []string{s.ID})
	if err != nil || len(alive) != 1 || alive[0] {
		t.Fatalf("Alive(expired) = %v, %v; want [false], nil", alive, err)
	}
}

func testRevoke(t *testing.T, newStore NewStore) {
	st, _ := setup(t, newStore)
	ctx := t.Context()
	s := create(t, st, "u-7", time.Hour)
	w := StartWatch(t, st)

	if err := st.Revoke(ctx, s.ID); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	_, err := st.Get(ctx, s.ID)
	wantErr(t, "Get(revoked)", err, session.ErrNotFound)

	// A second revocation fences the first: the watcher must see exactly
	// the two, in order, with nothing in between.
	fence := create(t, st, "u-8", time.Hour)
	if err := st.Revoke(ctx, fence.ID); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	w.Expect(t, session.Revocation{UserID: "u-7", SessionHash: session.Hash(s.ID)})
	w.Expect(t, session.Revocation{UserID: "u-8", SessionHash: session.Hash(fence.ID)})
}

func testRevokeUnknown(t *testing.T, newStore NewStore) {
	st, _ := setup(t, newStore)
	ctx := t.Context()
	wantErr(t, "Revoke(unknown)", st.Revoke(ctx, "no-such-session"), session.ErrNotFound)
	wantErr(t, "Revoke(\"\")", st.Revoke(ctx, ""), session.ErrNotFound)
	s := create(t, st, "u-1", time.Hour)
	if err := st.Revoke(ctx, s.ID); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	wantErr(t, "Revoke twice", st.Revoke(ctx, s.ID), session.ErrNotFound)
}

func testRevokeEveryWatch(t *testing.T, newStore NewStore) {
	st, _ := setup(t, newStore)
	w1, w2 := StartWatch(t, st), StartWatch(t, st)
	s := create(t, st, "u-1", time.Hour)
	if err := st.Revoke(t.Context(), s.ID); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	want := session.Revocation{UserID: "u-1", SessionHash: session.Hash(s.ID)}
	w1.Expect(t, want)
	w2.Expect(t, want)
}

func testWatchReturns(t *testing.T, newStore NewStore) {
	st, _ := setup(t, newStore)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- st.Watch(ctx, nil, func(session.Revocation) {}) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Watch returned %v after its context ended, want nil", err)
		}
	case <-time.After(wait):
		t.Fatal("Watch did not return after its context ended")
	}
}

func testTicket(t *testing.T, newStore NewStore) {
	st, _ := setup(t, newStore)
	ctx := t.Context()
	s := create(t, st, "u-1", time.Hour)
	tk, err := st.IssueTicket(ctx, s)
	if err != nil {
		t.Fatalf("IssueTicket: %v", err)
	}
	if len(tk) < 22 || tk == s.ID {
		t.Fatalf("ticket %d characters long, same as session id: %v", len(tk), tk == s.ID)
	}
	tk2, err := st.IssueTicket(ctx, s)
	if err != nil || tk2 == tk {
		t.Fatalf("second IssueTicket: same ticket %v, error %v", tk2 == tk, err)
	}
	got, err := st.RedeemTicket(ctx, tk)
	if err != nil {
		t.Fatalf("RedeemTicket: %v", err)
	}
	if got != s {
		t.Fatalf("RedeemTicket: got %+v, want %+v", got, s)
	}
	_, err = st.RedeemTicket(ctx, tk)
	wantErr(t, "RedeemTicket again", err, session.ErrNotFound)
	if _, err := st.RedeemTicket(ctx, tk2); err != nil {
		t.Fatalf("RedeemTicket(second ticket): %v", err)
	}
	for _, bad := range []string{"", "no-such-ticket", tk[:len(tk)-1] + "A", s.ID} {
		_, err = st.RedeemTicket(ctx, bad)
		wantErr(t, "RedeemTicket(unknown)", err, session.ErrNotFound)
	}
	if _, err := st.IssueTicket(ctx, session.Session{UserID: "u-1"}); err == nil {
		t.Fatal("IssueTicket for a session without id: got no error")
	}
}

func testTicketConcurrent(t *testing.T, newStore NewStore) {
	st, _ := setup(t, newStore)
	s := create(t, st, "u-1", time.Hour)
	tk, err := st.IssueTicket(t.Context(), s)
	if err != nil {
		t.Fatalf("IssueTicket: %v", err)
	}
	var ok, notFound atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			_, err := st.RedeemTicket(t.Context(), tk)
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, session.ErrNotFound):
				notFound.Add(1)
			default:
				t.Errorf("RedeemTicket: %v", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 1 || notFound.Load() != 7 {
		t.Fatalf("8 concurrent redeems: %d succeeded, %d not found; want 1 and 7", ok.Load(), notFound.Load())
	}
}

func testTicketRevoked(t *testing.T, newStore NewStore) {
	st, _ := setup(t, newStore)
	ctx := t.Context()
	s := create(t, st, "u-1", time.Hour)
	tk, err := st.IssueTicket(ctx, s)
	if err != nil {
		t.Fatalf("IssueTicket: %v", err)
	}
	if err := st.Revoke(ctx, s.ID); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	_, err = st.RedeemTicket(ctx, tk)
	wantErr(t, "RedeemTicket of revoked session", err, session.ErrNotFound)
}

func testTicketExpired(t *testing.T, newStore NewStore) {
	st, clk := setup(t, newStore)
	ctx := t.Context()
	s := create(t, st, "u-1", 10*time.Second)
	tk, err := st.IssueTicket(ctx, s)
	if err != nil {
		t.Fatalf("IssueTicket: %v", err)
	}
	clk.Advance(10 * time.Second) // the session expires, the ticket (30 s) does not
	_, err = st.RedeemTicket(ctx, tk)
	wantErr(t, "RedeemTicket of expired session", err, session.ErrExpired)
	_, err = st.RedeemTicket(ctx, tk)
	wantErr(t, "RedeemTicket again", err, session.ErrNotFound)
}

func testAlive(t *testing.T, newStore NewStore) {
	st, clk := setup(t, newStore)
	ctx := t.Context()
	live := create(t, st, "u-1", time.Hour)
	short := create(t, st, "u-2", time.Minute)
	revoked := create(t, st, "u-3", time.Hour)
	if err := st.Revoke(ctx, revoked.ID); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	clk.Advance(time.Minute)

	ids := []string{live.ID, "no-such-session", short.ID, revoked.ID, "", live.ID}
	want := []bool{true, false, false, false, false, true}
	got, err := st.Alive(ctx, ids)
	if err != nil {
		t.Fatalf("Alive: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("Alive: got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Alive: got %v, want %v", got, want)
		}
	}
	for _, ids := range [][]string{nil, {}} {
		got, err := st.Alive(ctx, ids)
		if err != nil || len(got) != 0 {
			t.Fatalf("Alive(%#v) = %v, %v; want [], nil", ids, got, err)
		}
	}
}

func testTwoStores(t *testing.T, newStore NewStore) {
	clk := NewClock()
	a, b := newStore(t, clk.Now), newStore(t, clk.Now)
	ctx := t.Context()

	s := create(t, a, "u-1", time.Hour)
	if got, err := b.Get(ctx, s.ID); err != nil || got != s {
		t.Fatalf("b.Get(a's session) = %+v, %v; want %+v", got, err, s)
	}
	tk, err := a.IssueTicket(ctx, s)
	if err != nil {
		t.Fatalf("IssueTicket: %v", err)
	}
	if got, err := b.RedeemTicket(ctx, tk); err != nil || got != s {
		t.Fatalf("b.RedeemTicket(a's ticket) = %+v, %v; want %+v", got, err, s)
	}
	_, err = a.RedeemTicket(ctx, tk)
	wantErr(t, "a.RedeemTicket(ticket b redeemed)", err, session.ErrNotFound)

	wa, wb := StartWatch(t, a), StartWatch(t, b)
	if err := a.Revoke(ctx, s.ID); err != nil {
		t.Fatalf("a.Revoke: %v", err)
	}
	want := session.Revocation{UserID: "u-1", SessionHash: session.Hash(s.ID)}
	wb.Expect(t, want)
	wa.Expect(t, want)
	alive, err := b.Alive(ctx, []string{s.ID})
	if err != nil || len(alive) != 1 || alive[0] {
		t.Fatalf("b.Alive(revoked on a) = %v, %v; want [false], nil", alive, err)
	}
}

// Watcher runs Store.Watch in the background for one test and collects the
// revocations it delivers. The test's cleanup stops the Watch and fails the
// test if it does not return nil promptly.
type Watcher struct {
	revs     chan session.Revocation
	overflow atomic.Bool
}

// StartWatch starts st.Watch until the end of the test and returns once
// Watch reported its subscription in place.
func StartWatch(t testing.TB, st session.Store) *Watcher {
	t.Helper()
	w := &Watcher{revs: make(chan session.Revocation, 1024)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		done <- st.Watch(ctx, func() { close(ready) }, func(r session.Revocation) {
			select {
			case w.revs <- r:
			default: // fn must not block
				w.overflow.Store(true)
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch returned %v after its context ended, want nil", err)
			}
		case <-time.After(wait):
			t.Errorf("Watch did not return within %v after its context ended", wait)
		}
		if w.overflow.Load() {
			t.Errorf("test watcher overflowed: more than %d revocations unread", cap(w.revs))
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Watch returned %v before it was ready", err)
	case <-time.After(wait):
		t.Fatalf("Watch not ready within %v", wait)
	}
	return w
}

// Sync returns once the Watch is subscribed again after a reconnect: it revokes fresh probe sessions
// (user ProbeUser) through via until one is delivered, waiting a little
// longer each round. The probes delivered are consumed, so that the next
// revocation read is the first one announced after Sync.
func (w *Watcher) Sync(t testing.TB, via session.Store) {
	t.Helper()
	ctx := context.Background()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	patience := 5 * time.Millisecond
	for {
		p, err := via.Create(ctx, ProbeUser, "", "", time.Minute)
		if err != nil {
			t.Fatalf("Sync: Create probe: %v", err)
		}
		if err := via.Revoke(ctx, p.ID); err != nil {
			t.Fatalf("Sync: Revoke probe: %v", err)
		}
		want := session.Hash(p.ID)
		round := time.NewTimer(patience)
	wait:
		for {
			select {
			case r := <-w.revs:
				if r.SessionHash == want {
					round.Stop()
					return
				}
				if r.UserID != ProbeUser {
					t.Fatalf("Sync: got revocation %+v, want only probes", r)
				}
			case <-round.C:
				break wait
			case <-deadline.C:
				t.Fatal("Sync: Watch delivered no probe revocation")
			}
		}
		patience = min(2*patience, 500*time.Millisecond)
	}
}

// ProbeUser is the user of the probe sessions Sync revokes. Next skips
// their revocations, which other watchers of the backend see too.
const ProbeUser = "probe"

// Next waits for the next revocation that is not a probe's, failing the
// test if none arrives within 10 s.
func (w *Watcher) Next(t testing.TB) session.Revocation {
	t.Helper()
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	for {
		select {
		case r := <-w.revs:
			if r.UserID != ProbeUser {
				return r
			}
		case <-timeout.C:
			t.Fatalf("no revocation delivered within %v", wait)
			return session.Revocation{}
		}
	}
}

// Expect fails the test unless the next revocation is want.
func (w *Watcher) Expect(t testing.TB, want session.Revocation) {
	t.Helper()
	if got := w.Next(t); got != want {
		t.Fatalf("revocation: got %+v, want %+v", got, want)
	}
}
