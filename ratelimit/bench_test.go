package ratelimit_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/redistest"
	"github.com/heraldgw/herald/ratelimit"
)

// The benchmarks use the gateway's defaults (PROTOCOL §9) over 10,000 keys
// and report the share of calls admitted (admitted and refused calls do
// different work); every run starts on fresh keys. The memory twins run on
// a virtual clock that moves 1 ms per call, so that each key comes back
// once per 10 s, as under real load of ~1,000 requests a second: admitted,
// with the window or bucket doing its expiry or refill work each time.

const benchKeys = 10_000

var (
	benchWindow = ratelimit.SlidingWindowConfig{Limit: 30, Window: 10 * time.Second}
	benchBucket = ratelimit.TokenBucketConfig{Rate: 10, Burst: 20}
)

type benchCall func(ctx context.Context, key string) (admitted bool, err error)

// benchLimiter runs call serially and from GOMAXPROCS*8 goroutines (as the
// concurrent requests of a gateway would).
func benchLimiter(b *testing.B, call benchCall) {
	ctx := context.Background()
	var run atomic.Int64
	keys := func() []string {
		prefix := "bench-" + strconv.FormatInt(run.Add(1), 10) + "-"
		ks := make([]string, benchKeys)
		for i := range ks {
			ks[i] = prefix + strconv.Itoa(i)
		}
		return ks
	}
	b.Run("serial", func(b *testing.B) {
		ks := keys()
		b.ReportAllocs()
		i, admitted := 0, 0
		for b.Loop() {
			ok, err := call(ctx, ks[i%benchKeys])
			if err != nil {
				b.Fatal(err)
			}
			if ok {
				admitted++
			}
			i++
		}
		b.ReportMetric(float64(admitted)/float64(i), "admitted/op")
	})
	b.Run("parallel", func(b *testing.B) {
		ks := keys()
		b.ReportAllocs()
		b.SetParallelism(8)
		b.ResetTimer()
		var n, admitted atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				ok, err := call(ctx, ks[int(n.Add(1))%benchKeys])
				if err != nil {
					b.Error(err)
					return
				}
				if ok {
					admitted.Add(1)
				}
			}
		})
		b.ReportMetric(float64(admitted.Load())/float64(max(n.Load(), 1)), "admitted/op")
	})
}

// virtualClock returns a clock that moves 1 ms each time it is read.
func virtualClock() func() time.Time {
	var ms atomic.Int64
	base := time.UnixMilli(1_732_600_000_000)
	return func() time.Time { return base.Add(time.Duration(ms.Add(1)) * time.Millisecond) }
}

func allowCall(l ratelimit.Limiter) benchCall {
	return func(ctx context.Context, key string) (bool, error) {
		r, err := l.Allow(ctx, key)
		return r.Allowed, err
	}
}

func BenchmarkSlidingWindowRedis(b *testing.B) {
	srv := redistest.Start(b)
	benchLimiter(b, allowCall(mustSlidingWindow(b, srv.Client(), benchWindow)))
}

func BenchmarkSlidingWindowMemory(b *testing.B) {
	l, _ := ratelimit.NewMemorySlidingWindow(benchWindow, virtualClock())
	benchLimiter(b, allowCall(l))
}

func BenchmarkTokenBucketRedis(b *testing.B) {
	srv := redistest.Start(b)
	benchLimiter(b, allowCall(mustTokenBucket(b, srv.Client(), benchBucket)))
}

func BenchmarkTokenBucketMemory(b *testing.B) {
	l, _ := ratelimit.NewMemoryTokenBucket(benchBucket, virtualClock())
	benchLimiter(b, allowCall(l))
}

// slots is what the concurrency benchmarks need of a limiter.
type slots interface {
	Acquire(ctx context.Context, user string, limit int) (ratelimit.Lease, ratelimit.Result, error)
	Release(ctx context.Context, l ratelimit.Lease) error
}

// acquireRelease is one socket's life as the limiter sees it: Acquire on
// connect (HERALD_MAX_CONNS_PER_USER 20), Release on close.
func acquireRelease(s slots) benchCall {
	return func(ctx context.Context, user string) (bool, error) {
		l, r, err := s.Acquire(ctx, user, 20)
		if err != nil {
			return false, err
		}
		return r.Allowed, s.Release(ctx, l)
	}
}

func BenchmarkConcurrencyRedis(b *testing.B) {
	srv := redistest.Start(b)
	benchLimiter(b, acquireRelease(mustConcurrency(b, srv.Client(), ratelimit.ConcurrencyConfig{})))
}

func BenchmarkConcurrencyMemory(b *testing.B) {
	c, _ := ratelimit.NewMemoryConcurrency(ratelimit.ConcurrencyConfig{})
	benchLimiter(b, acquireRelease(c))
}

// BenchmarkConcurrencyRenewRedis measures one heartbeat of a replica that
// holds 10,000 sockets of 10,000 users (every LeaseTTL/3, 10 s by default):
// one write, whatever the number of sockets.
func BenchmarkConcurrencyRenewRedis(b *testing.B) {
	srv := redistest.Start(b)
	c := mustConcurrency(b, srv.Client(), ratelimit.ConcurrencyConfig{})
	ctx := context.Background()
	for i := range benchKeys {
		if _, _, err := c.Acquire(ctx, "renew-"+strconv.Itoa(i), 20); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Renew(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
