package session_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/session"
	"github.com/heraldgw/herald/internal/session/sessiontest"
)

func TestMemory(t *testing.T) {
	// Memory is single-node: the stores of one test share state by being
	// the same store.
	var mu sync.Mutex
	stores := make(map[*testing.T]*session.Memory)
	sessiontest.Run(t, func(t *testing.T, now func() time.Time) session.Store {
		mu.Lock()
		defer mu.Unlock()
		if m, ok := stores[t]; ok {
			return m
		}
		m := session.NewMemory(now)
		stores[t] = m
		t.Cleanup(func() {
			mu.Lock()
			delete(stores, t)
			mu.Unlock()
		})
		return m
	})
}

func TestMemoryTicketLife(t *testing.T) {
	clk := sessiontest.NewClock()
	m := session.NewMemory(clk.Now)
	ctx := t.Context()
	s, err := m.Create(ctx, "u-1", "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := m.IssueTicket(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	stale, err := m.IssueTicket(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(session.TicketTTL - time.Millisecond)
	if _, err := m.RedeemTicket(ctx, fresh); err != nil {
		t.Fatalf("RedeemTicket 1ms before its end: %v", err)
	}
	clk.Advance(time.Millisecond)
	if _, err := m.RedeemTicket(ctx, stale); !errors.Is(err, session.ErrNotFound) {
		t.Fatalf("RedeemTicket at its end: got %v, want ErrNotFound", err)
	}
}

// A Watch whose fn is slow delays revocations but neither loses them nor
// blocks Revoke.
func TestMemoryWatchSlowFn(t *testing.T) {
	m := session.NewMemory(nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	release := make(chan struct{})
	probes := make(chan string, 1000)
	got := make(chan session.Revocation, 100)
	done := make(chan error, 1)
	go func() {
		done <- m.Watch(ctx, nil, func(r session.Revocation) {
			if r.UserID == sessiontest.ProbeUser {
				probes <- r.SessionHash
				return
			}
			<-release
			got <- r
		})
	}()
	// Wait until the Watch is registered: revoke probes until one arrives.
	for seen := false; !seen; {
		p, err := m.Create(ctx, sessiontest.ProbeUser, "", "", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Revoke(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
		select {
		case h := <-probes:
			seen = h == session.Hash(p.ID)
		case <-time.After(10 * time.Millisecond):
		}
	}

	var want []string
	for range 50 {
		s, err := m.Create(ctx, "u-1", "", "", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Revoke(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
		want = append(want, session.Hash(s.ID))
	}
	close(release)
	for i, h := range want {
		if r := <-got; r.SessionHash != h {
			t.Fatalf("revocation %d: got %s, want %s", i, r.SessionHash, h)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Watch: %v", err)
	}
}
