package hub

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/broker"
)

// busy makes c's writer take a frame and block on p, so that whatever is
// queued next goes out in one batch once open(p) is called.
func busy(t *testing.T, c *Conn, p *pipe) {
	t.Helper()
	p.stall()
	c.Send([]byte("blocker"))
	deadline := time.Now().Add(5 * time.Second)
	for p.writes.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the writer did not take the blocker")
		}
		time.Sleep(time.Millisecond)
	}
}

func open(p *pipe) {
	p.mu.Lock()
	close(p.gate)
	p.mu.Unlock()
}

// TestOnWriteReportsLiveEvents: each batch a writer wrote is reported with
// its depth and the publish time of its oldest live event; replays,
// replies and notices carry no publish time.
func TestOnWriteReportsLiveEvents(t *testing.T) {
	// Live ids must come after the join's baseline (now): future(i)'s time
	// and later.
	far := int64(1) << 50
	later := func(d int64) string { return fmt.Sprintf("%d-0", far+d) }
	tests := []struct {
		name string
		run  func(t *testing.T, h *Hub, b *broker.Memory, c *Conn, p *pipe)
		want []Write
	}{
		{"a live event", func(t *testing.T, h *Hub, _ *broker.Memory, _ *Conn, _ *pipe) {
			h.Broadcast("public:x", later(5), "", []byte("e"))
		}, []Write{{Frames: 1, Oldest: far + 5}}},
		{"a notice", func(t *testing.T, _ *Hub, _ *broker.Memory, c *Conn, _ *pipe) {
			c.Send([]byte("notice"))
		}, []Write{{Frames: 1}}},
		{"a backlog: the oldest event counts", func(t *testing.T, h *Hub, _ *broker.Memory, c *Conn, p *pipe) {
			busy(t, c, p)
			h.Broadcast("public:x", later(300), "", []byte("e1"))
			h.Broadcast("public:y", future(7), "", []byte("e2"))
			c.Send([]byte("notice"))
			open(p)
		}, []Write{{Frames: 1}, {Frames: 3, Oldest: far}}},
		{"a replay does not count", func(t *testing.T, h *Hub, b *broker.Memory, c *Conn, p *pipe) {
			since := publish(t, b, "public:z", "0")
			publish(t, b, "public:z", "1")
			busy(t, c, p)
			if err := h.Join(context.Background(), c, "public:z", since, reply); err != nil {
				t.Fatal(err)
			}
			h.Broadcast("public:z", future(0), "", []byte("live"))
			open(p)
		}, []Write{{Frames: 1}, {Frames: 3, Oldest: far}}},
		{"only a replay", func(t *testing.T, h *Hub, b *broker.Memory, c *Conn, p *pipe) {
			since := publish(t, b, "public:z", "0")
			publish(t, b, "public:z", "1")
			if err := h.Join(context.Background(), c, "public:z", since, reply); err != nil {
				t.Fatal(err)
			}
		}, []Write{{Frames: 2}}},
		{"a live event held by a join counts", func(t *testing.T, h *Hub, b *broker.Memory, c *Conn, p *pipe) {
			since := publish(t, b, "public:h", "0")
			publish(t, b, "public:h", "1")
			hs := h.src.(*hookSource)
			hs.beforeHistory = func() { h.Broadcast("public:h", future(1), "", []byte("held")) }
			if err := h.Join(context.Background(), c, "public:h", since, reply); err != nil {
				t.Fatal(err)
			}
		}, []Write{{Frames: 3, Oldest: far}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			writes := make(chan Write, 16)
			var h *Hub
			b := broker.NewMemory(func(ch, id, owner string, f []byte) { h.Broadcast(ch, id, owner, f) }, broker.MemoryConfig{})
			h = New(Config{OnWrite: func(w Write) { writes <- w }}, &hookSource{Memory: b}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			t.Cleanup(h.Close)
			p := newPipe(64)
			c := add(t, h, "1", p, "public:x", "public:y")
			tt.run(t, h, b, c, p)
			for i, want := range tt.want {
				select {
				case got := <-writes:
					if got != want {
						t.Errorf("write %d: got %+v, want %+v", i, got, want)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("write %d not reported", i)
				}
			}
			// A notice after them proves nothing else was reported before.
			c.Send([]byte("last"))
			select {
			case got := <-writes:
				if got != (Write{Frames: 1}) {
					t.Errorf("extra write reported: %+v", got)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the last notice was not reported")
			}
		})
	}
}

// TestQueuedSumsWaitingFrames: Queued counts what waits for a writer, not
// what it is writing, and is empty again once the queues drained.
func TestQueuedSumsWaitingFrames(t *testing.T) {
	// The stalled write counts as blocked at once, so QueueLen bounds it.
	h, _ := newHub(t, Config{QueueLen: 4, QueueBytes: 1000, SlowWrite: time.Nanosecond})
	p, idle := newPipe(64), newPipe(64)
	c := add(t, h, "1", p, "public:x")
	add(t, h, "2", idle, "public:y")
	busy(t, c, p)
	for i := range 3 {
		h.Broadcast("public:x", future(i), "", []byte("0123456789"))
	}
	if got, want := h.Queued(), (Queued{Frames: 3, Bytes: 30, MaxFill: 0.75}); got != want {
		t.Errorf("while stalled: got %+v, want %+v", got, want)
	}
	open(p)
	for range 4 {
		p.next(t)
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.Queued() != (Queued{}) {
		if time.Now().After(deadline) {
			t.Fatalf("after the writes: got %+v, want nothing queued", h.Queued())
		}
		time.Sleep(time.Millisecond)
	}
}
