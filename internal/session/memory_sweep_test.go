package session

import (
	"testing"
	"time"
)

func TestMemorySweep(t *testing.T) {
	now := time.Now()
	m := NewMemory(func() time.Time { return now })
	ctx := t.Context()
	short, err := m.Create(ctx, "u-1", "", "", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.IssueTicket(ctx, short); err != nil {
		t.Fatal(err)
	}
	now = now.Add(sweepEvery)
	long, err := m.Create(ctx, "u-2", "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.sessions[long.ID]; len(m.sessions) != 1 || !ok {
		t.Errorf("after a sweep %d sessions are kept, want only the live one", len(m.sessions))
	}
	if len(m.tickets) != 0 {
		t.Errorf("after a sweep %d stale tickets are kept, want none", len(m.tickets))
	}
}
