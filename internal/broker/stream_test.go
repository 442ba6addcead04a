package broker_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/events"
)

// idLog is a Handler that keeps the ids delivered on each channel, for
// streams too long for a brokertest.Recorder.
type idLog struct {
	mu  sync.Mutex
	ids map[string][]string
}

func newIDLog() *idLog { return &idLog{ids: make(map[string][]string)} }

func (l *idLog) Handle(channel, id, _ string, _ []byte) {
	l.mu.Lock()
	l.ids[channel] = append(l.ids[channel], id)
	l.mu.Unlock()
}

func (l *idLog) on(channel string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ids[channel])
}

// stream publishes numbered events round-robin on its channels from
// several goroutines (each owning some channels, so that a channel's
// publishes are sequential) at about rate events per second in all, until
// stopped. Every publish carries its own idempotency key and is retried
// with it until it succeeds: acked is then exactly what was published, in
// order, and every subscriber must end with exactly that.
type stream struct {
	t        *testing.T
	pub      func(ctx context.Context, key string, p events.Publication) (string, error)
	channels []string

	mu      sync.Mutex
	acked   map[string][]string
	retries atomic.Int64
	first   map[string]int // error text → count, for the log
	stop    chan struct{}
	wg      sync.WaitGroup
	started time.Time
	elapsed time.Duration
}

// startStream starts publishing; stopStream ends it.
func startStream(t *testing.T, channels []string, workers int, rate float64, pub func(ctx context.Context, key string, p events.Publication) (string, error)) *stream {
	s := &stream{t: t, pub: pub, channels: channels, acked: make(map[string][]string), first: make(map[string]int), stop: make(chan struct{}), started: time.Now()}
	per := time.Duration(float64(time.Second) * float64(workers) / rate)
	for w := range workers {
		var mine []string
		for i := w; i < len(channels); i += workers {
			mine = append(mine, channels[i])
		}
		s.wg.Go(func() { s.run(w, mine, per) })
	}
	t.Cleanup(s.halt)
	return s
}

func (s *stream) run(w int, channels []string, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		ch := channels[n%len(channels)]
		key := fmt.Sprintf("stream-%d-%d", w, n)
		p := events.Publication{Channel: ch, Event: "n", Data: []byte(fmt.Sprint(n))}
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			id, err := s.pub(ctx, key, p)
			cancel()
			if err == nil {
				s.mu.Lock()
				s.acked[ch] = append(s.acked[ch], id)
				s.mu.Unlock()
				break
			}
			s.retries.Add(1)
			s.mu.Lock()
			s.first[firstWords(err.Error())]++
			s.mu.Unlock()
			if time.Now().After(deadline) {
				s.t.Errorf("publish %s kept failing for 30s: %v", key, err)
				return
			}
			time.Sleep(20 * time.Millisecond) // back-off between retries of a failed publish
		}
	}
}

func firstWords(s string) string {
	if len(s) > 60 {
		return s[:60]
	}
	return s
}

// appendOne publishes one event through log, with a scoped key.
func appendOne(log *events.RedisLog) func(ctx context.Context, key string, p events.Publication) (string, error) {
	return func(ctx context.Context, key string, p events.Publication) (string, error) {
		ids, err := log.Append(ctx, events.ScopedKey("gtest", key), p)
		if err != nil {
			return "", err
		}
		return ids[0], nil
	}
}

// halt stops publishing and waits for the publishers.
func (s *stream) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
		s.wg.Wait()
		s.elapsed = time.Since(s.started)
	}
}

// total is how many events were acknowledged so far.
func (s *stream) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ids := range s.acked {
		n += len(ids)
	}
	return n
}

// waitTotal waits until n events were acknowledged.
func (s *stream) waitTotal(n int) {
	s.t.Helper()
	eventually(s.t, fmt.Sprintf("%d acknowledged publishes", n), func() bool { return s.total() >= n })
}

// check stops the stream, then waits until every log holds every
// acknowledged id, and requires each to hold exactly those, in order, once.
func (s *stream) check(logs ...*idLog) {
	s.t.Helper()
	s.halt()
	s.mu.Lock()
	acked := s.acked
	s.mu.Unlock()
	n := 0
	for _, ids := range acked {
		n += len(ids)
	}
	s.t.Logf("stream: %d events acknowledged in %v (%.0f/s), %d failed attempts retried %v",
		n, s.elapsed.Round(time.Millisecond), float64(n)/s.elapsed.Seconds(), s.retries.Load(), s.first)
	for i, l := range logs {
		for _, ch := range s.channels {
			want := acked[ch]
			if len(want) == 0 {
				continue
			}
			last := want[len(want)-1]
			deadline := time.Now().Add(30 * time.Second)
			for !slices.Contains(l.on(ch), last) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond) // polling for delivery, not synchronising
			}
			if got := l.on(ch); !slices.Equal(got, want) {
				s.t.Errorf("subscriber %d, %s: got %d events, want %d; first difference at %d: %s",
					i, ch, len(got), len(want), firstDiff(got, want), describeDiff(got, want))
			}
		}
	}
}

// checkHistory requires every channel's history to hold exactly the
// acknowledged events, in order: what a client resuming from the start
// gets. (It needs a history as long as the stream.)
func (s *stream) checkHistory(log *events.RedisLog) {
	s.t.Helper()
	s.halt()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.channels {
		r, err := log.Range(context.Background(), ch, "")
		if err != nil {
			s.t.Fatalf("history of %s: %v", ch, err)
		}
		var got []string
		for _, e := range r.Events {
			got = append(got, e.ID)
		}
		if want := s.acked[ch]; !slices.Equal(got, want) {
			s.t.Errorf("history of %s: %d events, want the %d acknowledged; first difference at %d: %s",
				ch, len(got), len(want), firstDiff(got, want), describeDiff(got, want))
		}
	}
}

func describeDiff(got, want []string) string {
	i := firstDiff(got, want)
	var b strings.Builder
	for _, part := range []struct {
		name string
		ids  []string
	}{{"got", got}, {"want", want}} {
		lo, hi := max(i-2, 0), min(i+3, len(part.ids))
		if lo < hi {
			fmt.Fprintf(&b, "%s[%d:%d]=%v ", part.name, lo, hi, part.ids[lo:hi])
		}
	}
	return b.String()
}

// subscribeAll subscribes b to channels.
func subscribeAll(t *testing.T, b broker.Broker, channels []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Subscribe(ctx, channels...); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
}
