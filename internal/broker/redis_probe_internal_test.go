package broker

import (
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

// Close and a connection replacement at the same moment: Close must
// return, whichever wins, and leave no connection open.
func TestCloseDuringReplace(t *testing.T) {
	rdb := redistest.Start(t).Client()
	names := events.Names{Prefix: "r:"}
	for i := range 40 {
		b := NewRedis(rdb, events.NewRedisLog(rdb, names, events.LogConfig{}), names, func(string, string, string, []byte) {},
			slog.New(slog.DiscardHandler), RedisOptions{ProbeInterval: time.Hour})
		deadline := time.Now().Add(5 * time.Second)
		for !b.plainProbeSubscribed() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond) // polling readiness, not synchronising
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			<-start
			b.mu.Lock()
			b.plain.rebuildLocked()
			b.mu.Unlock()
		})
		closed := make(chan struct{})
		wg.Go(func() { <-start; b.Close(); close(closed) })
		close(start)
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("run %d: Close hung while a replacement ran", i)
		}
		wg.Wait()
		b.mu.Lock()
		if ps := b.plain.ps; ps != nil {
			if err := ps.Ping(t.Context()); err == nil {
				t.Errorf("run %d: a pub/sub connection is still open after Close", i)
			}
		}
		b.mu.Unlock()
	}
}

func (b *Redis) plainProbeSubscribed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.probeSubscribedLocked(b.plain)
}

// A delivery loop that is behind is not a dead connection: its probes come
// late, in order behind the events, while it keeps delivering. The
// connection must be kept (a replacement would cost a refill under the very
// load that made the loop late), and every event delivered once, in order.
func TestBusyDeliveryLoopKeepsItsConnection(t *testing.T) {
	rdb := redistest.Start(t).Client()
	names := events.Names{Prefix: "busy:"}
	const n = 120
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	h := func(_, id, _ string, _ []byte) {
		time.Sleep(10 * time.Millisecond) // a fan-out to many slow sockets
		mu.Lock()
		defer mu.Unlock()
		if got = append(got, id); len(got) == n {
			close(done)
		}
	}
	b := NewRedis(rdb, events.NewRedisLog(rdb, names, events.LogConfig{}), names, h,
		slog.New(slog.DiscardHandler), RedisOptions{ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond})
	defer b.Close()
	ctx := t.Context()
	if err := b.Subscribe(ctx, "public:busy"); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	var want []string
	for i := range n {
		ids, err := b.Publish(ctx, "", events.Publication{Channel: "public:busy", Event: "e", Data: []byte(strconv.Itoa(i))})
		if err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
		want = append(want, ids...)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("not every event was delivered")
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, want) {
		t.Errorf("delivered %d events, not the %d published in order", len(got), len(want))
	}
	st := b.Stats()
	if st.Replacements != 0 || st.ProbesLate == 0 {
		t.Errorf("a busy loop: %d replacements, %d late probes; want 0 replacements and some late probes", st.Replacements, st.ProbesLate)
	}
}
