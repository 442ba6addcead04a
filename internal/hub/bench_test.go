package hub

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/events"
)

// sink is a Transport that accepts every write at once and counts it.
type sink struct{ writes *atomic.Int64 }

func (s sink) Write(_ time.Time, f [][]byte) error {
	s.writes.Add(int64(len(f)))
	return nil
}
func (s sink) Ping(context.Context) error { return nil }
func (s sink) Close(int, string) error    { return nil }
func (s sink) CloseNow() error            { return nil }

// BenchmarkBroadcast fans one event out to n local subscribers of a
// channel and waits until every socket write happened: the hub's whole
// cost per event, encode-once included (the frame is built by the caller).
func BenchmarkBroadcast(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			src := broker.NewMemory(nil, broker.MemoryConfig{})
			h := New(Config{QueueLen: 1 << 20, QueueBytes: 1 << 30}, src, slog.New(slog.NewTextHandler(io.Discard, nil)))
			defer h.Close()
			var writes atomic.Int64
			for i := range n {
				c, _ := h.Add(fmt.Sprint(i), fmt.Sprint(i), "", sink{&writes})
				h.Join(context.Background(), c, "public:bench", "", func(Joined) []byte { return nil })
			}
			// The id must come after the joins' baseline (now), or the
			// hub drops the frame as one the subscribers already have.
			id := events.FormatID(uint64(time.Now().Add(time.Hour).UnixMilli()), 0)
			frame := []byte(`{"type":"event","channel":"public:bench","id":"` + id + `","event":"e","data":{"n":1},"ts":1}`)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				h.Broadcast("public:bench", id, "", frame)
				for writes.Load() < int64((i+1)*n) {
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/delivery")
		})
	}
}
