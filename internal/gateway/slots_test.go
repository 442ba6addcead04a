package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/heraldgw/herald/internal/hub"
	"github.com/heraldgw/herald/internal/redistest"
	"github.com/heraldgw/herald/ratelimit"
	"github.com/heraldgw/herald/ratelimit/ratelimittest"
)

// slotsOnly hides the limiter's Run from the server, so that the test
// beats for it: its heartbeat pauses in between.
type slotsOnly struct{ Slots }

// TestLostSlotClosesItsSocket: a replica whose heartbeat paused for the
// lease TTL is swept by another; at its next beat its sockets count
// against the cap again, and the one that no longer fits (the user took
// a slot elsewhere meanwhile) is closed with 1013.
func TestLostSlotClosesItsSocket(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client()
	ctx := context.Background()
	const ttl = 300 * time.Millisecond
	var srv *Server
	lim, err := ratelimit.NewConcurrency(rdb, ratelimit.ConcurrencyConfig{
		Replica: "g", LeaseTTL: ttl,
		OnLost: func(l ratelimit.Lease) { srv.SlotLost(l) },
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServerOn(t, map[string]string{"HERALD_MAX_CONNS_PER_USER": "2"}, hub.Config{}, slotsOnly{lim})
	srv = ts.Server
	a, b := ts.dial(t, "u", ""), ts.dial(t, "u", "")
	a.next() // welcome
	b.next()
	other, err := ratelimit.NewConcurrency(rdb, ratelimit.ConcurrencyConfig{Replica: "o", LeaseTTL: ttl}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ratelimittest.WaitFor(t, 10*time.Second, "the paused replica's slots swept", func() bool {
		other.Renew(ctx)
		return rdb.Exists(ctx, lim.Key("u")).Val() == 0
	})
	if _, r, err := other.Acquire(ctx, "u", 2); err != nil || !r.Allowed {
		t.Fatalf("a slot elsewhere after the sweep: %+v, %v", r, err)
	}

	if err := lim.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	var closed, open *wsClient
	timeout := time.After(5 * time.Second)
	for closed == nil {
		select {
		case _, ok := <-a.frames:
			if !ok {
				closed, open = a, b
			}
		case _, ok := <-b.frames:
			if !ok {
				closed, open = b, a
			}
		case <-timeout:
			t.Fatal("no socket closed after the cap filled")
		}
	}
	if got := websocket.CloseStatus(closed.err); got != CloseSlotLost {
		t.Errorf("closed with %d (%v), want %d", got, closed.err, CloseSlotLost)
	}
	open.quiet() // the other stays
	if n := rdb.ZCard(ctx, lim.Key("u")).Val(); n != 2 {
		t.Errorf("u holds %d slots, want 2: the open socket's again, and the one taken elsewhere", n)
	}
	if _, r, err := other.Acquire(ctx, "u", 2); err != nil || r.Allowed {
		t.Errorf("a third slot of 2: %+v, %v; want refused", r, err)
	}
}
