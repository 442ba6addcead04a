package ratelimit_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/redistest"
	"github.com/heraldgw/herald/ratelimit"
)

var _ interface {
	AllowN(ctx context.Context, key string, n int) (ratelimit.Result, error)
} = (*ratelimit.TokenLease)(nil)

func mustTokenLease(t testing.TB, rdb redis.Scripter, cfg ratelimit.TokenBucketConfig, life time.Duration, now func() time.Time) *ratelimit.TokenLease {
	t.Helper()
	l, err := ratelimit.NewTokenLease(mustTokenBucket(t, rdb, cfg), life, now)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// bucketTokens reads the tokens field of a bucket hash (without refill).
func bucketTokens(t *testing.T, rdb *redis.Client, key string) float64 {
	t.Helper()
	v, err := rdb.HGet(context.Background(), key, "tokens").Float64()
	if err != nil {
		t.Fatalf("HGET %s tokens: %v", key, err)
	}
	return v
}

// leaseOf makes l take a lease on key: a first request starts the demand
// count, a second one 1 ms later (on clk) finds demand for far more than
// a lease may hold, so it asks for half the burst. It returns the tokens
// leased.
func leaseOf(t *testing.T, l *ratelimit.TokenLease, clk *clock, at int64, key string) int {
	t.Helper()
	for i, ms := range []int64{at, at + 1} {
		clk.Set(ms)
		if r, err := l.Allow(context.Background(), key); err != nil || !r.Allowed {
			t.Fatalf("request %d: got %+v, %v; want admitted", i, r, err)
		}
	}
	n := ratelimit.LeaseTokens(l, key)
	if n == 0 {
		t.Fatal("no lease taken")
	}
	return n
}

// TestTokenLeaseLeavesRoom: a lease taken from a full bucket leaves the
// bucket low enough that, refilled for the whole lease life while the
// lease is out, bucket and lease together never hold more than the burst;
// spending the lease late therefore admits nothing the bucket would not.
func TestTokenLeaseLeavesRoom(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	clk := newClock()
	const rate, burst, life = 100.0, 100, 100 * time.Millisecond
	l := mustTokenLease(t, rdb, ratelimit.TokenBucketConfig{Rate: rate, Burst: burst}, life, clk.Now)

	leased := leaseOf(t, l, clk, 0, "k")
	if leased != burst/2 {
		t.Fatalf("leased %d, want half the burst, %d", leased, burst/2)
	}
	tokens := bucketTokens(t, rdb, l.Key("k"))
	if most := burst - rate*life.Seconds(); tokens+float64(leased) > most+1e-9 {
		t.Fatalf("bucket %v + lease %d = %v, want ≤ burst − rate × life = %v", tokens, leased, tokens+float64(leased), most)
	}
}

// TestTokenLeaseSpendsLocally: a request paid from the lease makes no
// script call and reports the bucket's tokens plus the lease's.
func TestTokenLeaseSpendsLocally(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	clk := newClock()
	l := mustTokenLease(t, rdb, ratelimit.TokenBucketConfig{Rate: 0.001, Burst: 100}, 100*time.Millisecond, clk.Now)
	leased := leaseOf(t, l, clk, 0, "k")
	before := bucketTokens(t, rdb, l.Key("k"))

	clk.Set(50)
	r, err := l.AllowN(context.Background(), "k", 3)
	if err != nil || !r.Allowed {
		t.Fatalf("AllowN(3) from the lease: got %+v, %v", r, err)
	}
	if got := bucketTokens(t, rdb, l.Key("k")); got != before {
		t.Fatalf("bucket went from %v to %v: the request was decided in Redis", before, got)
	}
	if got, want := r.Remaining, int(before)+leased-3; got != want {
		t.Fatalf("Remaining %d, want bucket %d + lease left %d = %d", got, int(before), leased-3, want)
	}
	if got := ratelimit.LeaseTokens(l, "k"); got != leased-3 {
		t.Fatalf("lease holds %d, want %d", got, leased-3)
	}
}

// TestTokenLeaseExpires: once its life ends a lease pays for nothing more,
// and its unspent tokens stay spent: they do not return to the bucket.
func TestTokenLeaseExpires(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	clk := newClock()
	const burst = 100
	l := mustTokenLease(t, rdb, ratelimit.TokenBucketConfig{Rate: 0.001, Burst: burst}, 100*time.Millisecond, clk.Now)
	leased := leaseOf(t, l, clk, 0, "k") // 2 admitted
	before := bucketTokens(t, rdb, l.Key("k"))

	clk.Set(101) // the lease, taken at 1, has ended
	r, err := l.Allow(context.Background(), "k")
	if err != nil || !r.Allowed {
		t.Fatalf("after expiry: got %+v, %v; want admitted by Redis", r, err)
	}
	after := bucketTokens(t, rdb, l.Key("k"))
	if after > before-1 {
		t.Fatalf("bucket went from %v to %v: the request did not spend in Redis", before, after)
	}
	// Admitted 3; the old lease's tokens are gone, a new lease may hold
	// some (and the bucket refilled a few thousandths of a token).
	if most := float64(burst-3-leased) + 0.01; after+float64(ratelimit.LeaseTokens(l, "k")) > most {
		t.Fatalf("bucket %v + new lease %d > %v: the expired lease's %d tokens came back",
			after, ratelimit.LeaseTokens(l, "k"), most, leased)
	}
}

// TestTokenLeaseRefusal: with the bucket empty, a replica whose lease
// cannot pay is refused with RetryAfter, while the replica holding the
// lease still spends it (the documented bound: at most one lease life).
func TestTokenLeaseRefusal(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	cfg := ratelimit.TokenBucketConfig{Rate: 0.001, Burst: 10}
	a := mustTokenLease(t, srv.Client(), cfg, 100*time.Millisecond, clk.Now)
	b := mustTokenLease(t, srv.Client(), cfg, 100*time.Millisecond, clk.Now)
	ctx := context.Background()
	leased := leaseOf(t, a, clk, 0, "k") // 2 admitted, 5 leased
	for i := 0; ; i++ {
		r, err := b.Allow(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if !r.Allowed {
			if r.RetryAfter <= 0 || r.Remaining != 0 || r.Limit != 10 {
				t.Fatalf("refusal: got %+v, want RetryAfter > 0, Remaining 0, Limit 10", r)
			}
			if got, want := i, 10-2-leased; got != want {
				t.Fatalf("b admitted %d before its refusal, want %d", got, want)
			}
			break
		}
	}
	if r, err := a.AllowN(ctx, "k", leased); err != nil || !r.Allowed {
		t.Fatalf("a spending its lease: got %+v, %v", r, err)
	}
	if r, err := a.Allow(ctx, "k"); err != nil || r.Allowed || r.RetryAfter <= 0 {
		t.Fatalf("a past its lease with the bucket empty: got %+v, %v; want refused with RetryAfter", r, err)
	}
}

// TestTokenLeaseReplicas: two replicas with leases, each hammered by two
// callers until refused, on a bucket that barely refills: together they
// admit at most the burst, in fewer script calls than requests.
func TestTokenLeaseReplicas(t *testing.T) {
	srv := redistest.Start(t)
	clients := replicas(t, srv, 2)
	const burst = 200
	ls := make([]*ratelimit.TokenLease, len(clients))
	for i, c := range clients {
		ls[i] = mustTokenLease(t, c, ratelimit.TokenBucketConfig{Rate: 0.001, Burst: burst}, 100*time.Millisecond, nil)
	}
	admitted, requests := hammer(t, ls, "k", func(refused int) bool { return refused >= 3 })
	if admitted > burst {
		t.Fatalf("admitted %d, want at most the burst, %d", admitted, burst)
	}
	if calls := scriptCalls(t, clients[0]); calls >= requests {
		t.Fatalf("%d script calls for %d requests: no lease was used", calls, requests)
	}
	t.Logf("%d admitted of %d requests, %d script calls", admitted, requests, scriptCalls(t, clients[0]))
}

// TestTokenLeaseReplicasRefill: the same with a bucket that refills at
// 1,000 tokens per second during the run: admitted ≤ burst + rate × the
// time the run took.
func TestTokenLeaseReplicasRefill(t *testing.T) {
	srv := redistest.Start(t)
	clients := replicas(t, srv, 2)
	const rate, burst = 1000.0, 50
	ls := make([]*ratelimit.TokenLease, len(clients))
	for i, c := range clients {
		ls[i] = mustTokenLease(t, c, ratelimit.TokenBucketConfig{Rate: rate, Burst: burst}, 20*time.Millisecond, nil)
	}
	start := time.Now()
	admitted, requests := hammer(t, ls, "k", func(int) bool { return time.Since(start) > 300*time.Millisecond })
	elapsed := time.Since(start)
	if most := burst + int(rate*elapsed.Seconds()) + 1; admitted > most {
		t.Fatalf("admitted %d in %v, want at most burst + rate × time = %d", admitted, elapsed, most)
	}
	t.Logf("%d admitted of %d requests in %v, %d script calls", admitted, requests, elapsed, scriptCalls(t, clients[0]))
}

// hammer calls Allow on key from two goroutines per limiter until done
// (given the refusals a goroutine has seen) says stop, and returns what
// was admitted and asked in all.
func hammer(t *testing.T, ls []*ratelimit.TokenLease, key string, done func(refused int) bool) (admitted, requests int) {
	t.Helper()
	var nAdmitted, nRequests atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4*len(ls))
	for i := range 2 * len(ls) {
		l := ls[i%len(ls)]
		wg.Go(func() {
			for refused := 0; !done(refused); {
				r, err := l.Allow(context.Background(), key)
				if err != nil {
					errs <- err
					return
				}
				nRequests.Add(1)
				if r.Allowed {
					nAdmitted.Add(1)
				} else {
					refused++
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return int(nAdmitted.Load()), int(nRequests.Load())
}

func TestTokenLeaseInvalid(t *testing.T) {
	b := mustTokenBucket(t, nil, ratelimit.TokenBucketConfig{Rate: 1, Burst: 1})
	for _, life := range []time.Duration{0, -time.Millisecond, ratelimit.MaxLeaseLife + time.Millisecond} {
		if _, err := ratelimit.NewTokenLease(b, life, nil); !errors.Is(err, ratelimit.ErrInvalidArgument) {
			t.Errorf("life %v: err %v, want ErrInvalidArgument", life, err)
		}
	}
}
