package broker

import (
	"log/slog"
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
