package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/events"
)

// fakeClock is a settable clock; tests are single-goroutine.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func publishN(t *testing.T, m *Memory, ch string, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		got, err := m.Publish(context.Background(), "", events.Publication{Channel: ch, Event: "e", Data: json.RawMessage(fmt.Sprint(i))})
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
		ids = append(ids, got[0])
	}
	return ids
}

func TestMemoryIDsSurviveClockStallAndJumpBack(t *testing.T) {
	clock := &fakeClock{t: time.UnixMilli(1_732_600_000_000)}
	m := newMemory(nil, MemoryConfig{HistorySize: 10, HistoryTTL: time.Minute}, clock.now)
	ch := "user:42"
	ids := publishN(t, m, ch, 2) // stalled clock
	clock.t = clock.t.Add(-5 * time.Second)
	ids = append(ids, publishN(t, m, ch, 1)...) // clock went back
	clock.t = clock.t.Add(time.Minute)
	ids = append(ids, publishN(t, m, ch, 1)...)
	want := []string{"1732600000000-1", "1732600000000-2", "1732600000000-3", "1732600055000-0"} // a new record starts at seq 1
	if !slices.Equal(ids, want) {
		t.Errorf("ids %v, want %v", ids, want)
	}
}

func TestMemoryHistoryWindow(t *testing.T) {
	clock := &fakeClock{t: time.UnixMilli(1_000_000)}
	m := newMemory(nil, MemoryConfig{HistorySize: 3, HistoryTTL: time.Minute}, clock.now)
	ch := "public:news"
	ids := publishN(t, m, ch, 5)

	r, _ := m.History(t.Context(), ch, ids[1])
	if got := eventIDs(r.Events); !slices.Equal(got, ids[2:]) || !r.Complete {
		t.Errorf("History after %s = %v, %v; want %v, true", ids[1], got, r.Complete, ids[2:])
	}
	if r, _ := m.History(t.Context(), ch, ids[0]); r.Complete {
		t.Errorf("History after %s: complete, want a gap (event %s was trimmed)", ids[0], ids[1])
	}
	r, _ = m.History(t.Context(), ch, "")
	if want := events.AppendFrame(nil, ids[4], events.Publication{Channel: ch, Event: "e", Data: json.RawMessage("4")}); string(r.Events[2].Frame) != string(want) {
		t.Errorf("stored frame %s, want %s", r.Events[2].Frame, want)
	}

	clock.t = clock.t.Add(time.Minute + time.Millisecond)
	if r, _ := m.History(t.Context(), ch, ids[4]); len(r.Events) != 0 || !r.Complete {
		t.Errorf("History after the newest id once expired = %d events, %v; want 0, true", len(r.Events), r.Complete)
	}
	if r, _ := m.History(t.Context(), ch, ids[3]); len(r.Events) != 0 || r.Complete {
		t.Errorf("History after %s once expired = %d events, %v; want 0, false", ids[3], len(r.Events), r.Complete)
	}
	// The record outlives the history for the record TTL, then a resume
	// from before it is not known complete.
	clock.t = clock.t.Add(events.DefaultRecordTTL)
	if r, _ := m.History(t.Context(), ch, ids[4]); r.Complete {
		t.Errorf("History after %s once the record expired: complete, want unknown (false)", ids[4])
	}
}

func TestMemoryIdempotencyExpires(t *testing.T) {
	clock := &fakeClock{t: time.UnixMilli(1_000_000)}
	m := newMemory(nil, MemoryConfig{HistorySize: 3, HistoryTTL: time.Minute}, clock.now)
	p := events.Publication{Channel: "user:1", Event: "e"}
	first, _ := m.Publish(context.Background(), "k", p)
	again, _ := m.Publish(context.Background(), "k", p)
	if first[0] != again[0] {
		t.Fatalf("repeat id %s, want %s", again[0], first[0])
	}
	if _, err := m.Publish(context.Background(), "k", p, p); err == nil {
		t.Error("reusing a key for another number of events: got nil error")
	}
	clock.t = clock.t.Add(time.Minute)
	later, _ := m.Publish(context.Background(), "k", p)
	if later[0] == first[0] {
		t.Errorf("key still honoured after the TTL")
	}
}

func TestMemorySweepForgetsIdleChannels(t *testing.T) {
	clock := &fakeClock{t: time.UnixMilli(1_000_000)}
	m := newMemory(nil, MemoryConfig{HistorySize: 3, HistoryTTL: time.Minute}, clock.now)
	publishN(t, m, "public:a", 1)
	m.Publish(context.Background(), "key", events.Publication{Channel: "public:b", Event: "e"})
	clock.t = clock.t.Add(2 * time.Minute)
	publishN(t, m, "public:c", 1)
	m.mu.Lock()
	if len(m.chans) != 3 || len(m.idem) != 0 {
		t.Errorf("after the history TTL: %d channels and %d idempotency keys kept, want 3 records and 0", len(m.chans), len(m.idem))
	}
	m.mu.Unlock()
	clock.t = clock.t.Add(events.DefaultRecordTTL)
	publishN(t, m, "public:c", 1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.chans) != 1 {
		t.Errorf("after the record TTL: %d channels kept, want 1", len(m.chans))
	}
}

func eventIDs(evs []Event) []string {
	var ids []string
	for _, e := range evs {
		ids = append(ids, e.ID)
	}
	return ids
}

// TestMemoryPingDoesNotWaitForPublishes: while a publish's fan-out runs
// and the next publish waits for it (holding mu), Ping still answers at
// once; it used to wait behind them, and a busy gateway's readiness probe
// took its in-memory backend for unreachable.
func TestMemoryPingDoesNotWaitForPublishes(t *testing.T) {
	release := make(chan struct{})
	m := NewMemory(func(string, string, string, []byte) { <-release }, MemoryConfig{})
	defer m.Close()
	if err := m.Subscribe(context.Background(), "public:x"); err != nil {
		t.Fatal(err)
	}
	pub := func() {
		m.Publish(context.Background(), "", events.Publication{Channel: "public:x", Event: "e", Data: json.RawMessage("1")})
	}
	done := make(chan struct{})
	go func() { pub(); done <- struct{}{} }() // its fan-out blocks
	go func() { pub(); done <- struct{}{} }() // waits for it, holding mu
	deadline := time.Now().Add(10 * time.Second)
	for m.mu.TryLock() { // until a publish holds mu
		m.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("no publish took the lock")
		}
		time.Sleep(time.Millisecond)
	}
	pinged := make(chan error, 1)
	go func() { pinged <- m.Ping(context.Background()) }()
	select {
	case err := <-pinged:
		if err != nil {
			t.Errorf("Ping: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Ping waited for the publishes")
	}
	close(release)
	<-done
	<-done
}
