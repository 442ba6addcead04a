package ratelimit_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/redistest"
	"github.com/heraldgw/herald/ratelimit"
	"github.com/heraldgw/herald/ratelimit/ratelimittest"
)

// leaseTTL stands in for the 30 s default so that a dead replica's slots
// free within the test.
const leaseTTL = 300 * time.Millisecond

// TestConcurrencyDeadReplica: a replica that dies holding a slot (it stops
// renewing) loses it within the lease TTL, while a live replica running
// its heartbeat keeps its own slot past several TTLs.
func TestConcurrencyDeadReplica(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	newReplica := func(name string) *ratelimit.Concurrency {
		return mustConcurrency(t, srv.Client(), ratelimit.ConcurrencyConfig{Replica: name, LeaseTTL: leaseTTL})
	}
	dead, live, other := newReplica("dead"), newReplica("live"), newReplica("other")

	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { live.Run(runCtx) })
	t.Cleanup(func() { stop(); wg.Wait() })

	acquire := func(c *ratelimit.Concurrency) ratelimit.Result {
		t.Helper()
		_, r, err := c.Acquire(ctx, "u", 2)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if !acquire(live).Allowed || !acquire(dead).Allowed {
		t.Fatal("first two slots refused")
	}
	if acquire(other).Allowed {
		t.Fatal("third slot of 2 admitted")
	}
	start := time.Now()
	ratelimittest.WaitFor(t, 10*time.Second, "dead replica's slot freed", func() bool { return acquire(other).Allowed })
	// Polling with refused acquires records nothing; now both remaining
	// slots must be held by live (renewed) and other.
	members := srv.Client().ZRange(ctx, other.Key("u"), 0, -1).Val()
	slices.Sort(members)
	if len(members) != 2 || !strings.HasPrefix(members[0], "live:") || !strings.HasPrefix(members[1], "other:") {
		t.Fatalf("members after expiry: %q, want one of live, one of other", members)
	}
	t.Logf("dead replica's slot freed after %v (lease TTL %v)", time.Since(start), leaseTTL)

	// Several TTLs later the live replica still holds its slot (other's,
	// never renewed, has expired like dead's).
	ratelimittest.WaitFor(t, 10*time.Second, "three lease TTLs", func() bool { return time.Since(start) > 3*leaseTTL })
	if !acquire(other).Allowed {
		t.Fatal("other's unrenewed slot did not expire")
	}
	if acquire(dead).Allowed {
		t.Fatal("live's renewed slot expired")
	}
	if live.Held() != 1 {
		t.Fatalf("live holds %d leases, want 1", live.Held())
	}
}

// TestConcurrencyLostLease: a lease that expired while its replica could not
// renew (here: did not) is not resurrected by a late renewal, which would
// push the user over the limit; the replica stops renewing it.
func TestConcurrencyLostLease(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	a := mustConcurrency(t, srv.Client(), ratelimit.ConcurrencyConfig{Replica: "a", LeaseTTL: leaseTTL})
	b := mustConcurrency(t, srv.Client(), ratelimit.ConcurrencyConfig{Replica: "b", LeaseTTL: leaseTTL})
	la, r, err := a.Acquire(ctx, "u", 1)
	if err != nil || !r.Allowed {
		t.Fatalf("Acquire: %+v, %v", r, err)
	}
	ratelimittest.WaitFor(t, 10*time.Second, "a's lease expired", func() bool {
		_, r, err := b.Acquire(ctx, "u", 1)
		if err != nil {
			t.Fatal(err)
		}
		return r.Allowed
	})
	if err := a.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if n := srv.Client().ZCard(ctx, a.Key("u")).Val(); n != 1 {
		t.Fatalf("ZCARD %d after the late renewal, want 1 (b's only)", n)
	}
	if a.Held() != 0 {
		t.Fatalf("a still renews %d leases, want 0", a.Held())
	}
	if err := a.Release(ctx, la); err != nil {
		t.Fatal(err)
	}
	if n := srv.Client().ZCard(ctx, a.Key("u")).Val(); n != 1 {
		t.Fatalf("releasing the lost lease removed b's slot: ZCARD %d", n)
	}
}

// TestConcurrencyKeys checks the key shape, the prefix, the lease expiry
// scores on Redis's clock, and that Release removes the member at once.
func TestConcurrencyKeys(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	c := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Prefix: "p1:", Replica: "node-a"})
	if got := c.Key("42"); got != "p1:herald:conns:42" {
		t.Fatalf("Key: got %q", got)
	}
	before := redisNow(t, rdb)
	l, _, err := c.Acquire(ctx, "42", 5)
	if err != nil {
		t.Fatal(err)
	}
	after := redisNow(t, rdb)
	zs := rdb.ZRangeWithScores(ctx, "p1:herald:conns:42", 0, -1).Val()
	if len(zs) != 1 || !strings.HasPrefix(zs[0].Member.(string), "node-a:") {
		t.Fatalf("members %v, want one node-a:…", zs)
	}
	ttl := ratelimit.DefaultLeaseTTL.Milliseconds()
	if s := int64(zs[0].Score); s < before+ttl || s > after+ttl {
		t.Errorf("lease expiry %d outside Redis TIME + TTL [%d, %d]", s, before+ttl, after+ttl)
	}
	if err := c.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, "p1:herald:conns:42").Val(); n != 0 {
		t.Fatalf("key still exists after the last Release")
	}
}

// One user's key that the renewal script cannot handle must not keep the
// leases of every other user from being renewed.
func TestRenewSurvivesOneBadKey(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	c, err := ratelimit.NewConcurrency(rdb, ratelimit.ConcurrencyConfig{LeaseTTL: time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const users = 2000
	for i := range users {
		if _, _, err := c.Acquire(ctx, fmt.Sprint("u", i), 5); err != nil {
			t.Fatal(err)
		}
	}
	rdb.Set(ctx, c.Key("u7"), "x", 0) // one bad key (WRONGTYPE inside the script)
	before := map[int]float64{}
	for i := range users {
		z := rdb.ZRangeWithScores(ctx, c.Key(fmt.Sprint("u", i)), 0, 0).Val()
		if len(z) == 1 {
			before[i] = z[0].Score
		}
	}
	time.Sleep(20 * time.Millisecond) // so that a renewed lease gets a later expiry
	err = c.Renew(ctx)
	notRenewed := 0
	for i, s := range before {
		z := rdb.ZRangeWithScores(ctx, c.Key(fmt.Sprint("u", i)), 0, 0).Val()
		if len(z) == 1 && z[0].Score == s {
			notRenewed++
		}
	}
	if err == nil {
		t.Error("Renew with a bad key: got nil error, want it reported")
	}
	if notRenewed > 0 {
		t.Fatalf("%d healthy users' leases were not renewed because of one bad key", notRenewed)
	}
}
