package ratelimit_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/redistest"
	"github.com/heraldgw/herald/ratelimit"
	"github.com/heraldgw/herald/ratelimit/ratelimittest"
)

// testClock is a clock that moves only when told, for the pacing of a
// Concurrency's own beats (ratelimit.SetClock).
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock { return &testClock{t: time.Now()} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// pacedConcurrency is a limiter whose beats are paced by a clock the test
// moves.
func pacedConcurrency(t *testing.T, rdb redis.Cmdable, name string) (*ratelimit.Concurrency, *testClock) {
	t.Helper()
	c := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: name, LeaseTTL: leaseTTL})
	clock := newTestClock()
	ratelimit.SetClock(c, clock.Now)
	return c, clock
}

// scriptCalls counts the script calls that Redis ran without an error
// (NOSCRIPT among them) since its stats were reset.
func scriptCalls(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	stats := rdb.Info(context.Background(), "commandstats").Val()
	n := 0
	for _, cmd := range []string{"evalsha", "eval"} {
		line := statLine(stats, cmd)
		if line == "" {
			continue
		}
		n += statField(t, line, "calls") - statField(t, line, "failed_calls")
	}
	return n
}

// TestConcurrencyFreshBeatSkipsTheBeat: an Acquire within LeaseTTL/3 of a
// confirmed beat runs the acquire script alone (no heartbeat script), even
// when Redis lost its scripts (NOSCRIPT inside the pipeline); one later
// than that beats first.
func TestConcurrencyFreshBeatSkipsTheBeat(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	c, clock := pacedConcurrency(t, rdb, "a")
	acquire := func(what string, wantScripts int) {
		t.Helper()
		rdb.ConfigResetStat(ctx)
		if _, r, err := c.Acquire(ctx, "u", 10); err != nil || !r.Allowed {
			t.Fatalf("%s: Acquire: %+v, %v", what, r, err)
		}
		if got := scriptCalls(t, rdb); got != wantScripts {
			t.Errorf("%s: %d script calls, want %d", what, got, wantScripts)
		}
	}
	acquire("first", 2) // the first beat, then the slot
	acquire("fresh", 1)
	clock.Add(leaseTTL/3 - time.Millisecond)
	acquire("fresh, just", 1)
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	rdb.ConfigResetStat(ctx)
	if _, r, err := c.Acquire(ctx, "u", 10); err != nil || !r.Allowed {
		t.Fatalf("after SCRIPT FLUSH: Acquire: %+v, %v", r, err)
	}
	clock.Add(time.Millisecond)
	acquire("a third of the TTL later", 2)
	acquire("fresh again", 1)
	if n := rdb.ZCard(ctx, c.Key("u")).Val(); n != 6 {
		t.Fatalf("%d slots, want 6", n)
	}
	if c.Held() != 6 {
		t.Fatalf("holds %d leases, want 6", c.Held())
	}
}

// TestConcurrencySkippedBeatFreedOnCrash: the slots a replica took
// without beating are in its index like the others, so that when it dies
// the living free all of them.
func TestConcurrencySkippedBeatFreedOnCrash(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	crashed, _ := pacedConcurrency(t, rdb, "crashed") // its clock stands still: every Acquire after the first skips the beat
	live := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: "live", LeaseTTL: leaseTTL})
	for i := range 3 {
		if _, r, err := crashed.Acquire(ctx, "u", 3); err != nil || !r.Allowed {
			t.Fatalf("Acquire %d: %+v, %v", i, r, err)
		}
	}
	if _, r, err := live.Acquire(ctx, "u", 3); err != nil || r.Allowed {
		t.Fatalf("a fourth slot of 3: %+v, %v", r, err)
	}
	// crashed never beats again.
	ratelimittest.WaitFor(t, 10*time.Second, "the crashed replica's slots freed", func() bool {
		live.Renew(ctx)
		return rdb.Exists(ctx, live.Key("u")).Val() == 0
	})
	for i := range 3 {
		if _, r, err := live.Acquire(ctx, "u", 3); err != nil || !r.Allowed {
			t.Fatalf("after the sweep, Acquire %d: %+v, %v", i, r, err)
		}
	}
}

// TestConcurrencyLapsedBeatTakesTheFullPath: a replica whose heartbeat
// lapsed (it could not beat for LeaseTTL, and was swept) beats before its
// next slot, finds itself dead and takes the slot under a new, live
// instance, never under the dead one.
func TestConcurrencyLapsedBeatTakesTheFullPath(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	a, clock := pacedConcurrency(t, rdb, "a")
	b := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: "b", LeaseTTL: leaseTTL})
	if _, r, err := a.Acquire(ctx, "u", 5); err != nil || !r.Allowed {
		t.Fatalf("Acquire: %+v, %v", r, err)
	}
	old := rdb.ZRange(ctx, a.Key("u"), 0, -1).Val()[0]
	oldInstance, _, _ := strings.Cut(old, ":")
	ratelimittest.WaitFor(t, 10*time.Second, "a swept", func() bool {
		b.Renew(ctx)
		return rdb.Exists(ctx, a.Key("u")).Val() == 0
	})
	clock.Add(leaseTTL)
	if _, r, err := a.Acquire(ctx, "u", 5); err != nil || !r.Allowed {
		t.Fatalf("Acquire after the lapse: %+v, %v", r, err)
	}
	members := rdb.ZRange(ctx, a.Key("u"), 0, -1).Val()
	if len(members) != 1 || !strings.HasPrefix(members[0], "a-") || strings.HasPrefix(members[0], oldInstance+":") {
		t.Fatalf("members %q, want one of a new instance of a (the old one was %s)", members, oldInstance)
	}
	instance, _, _ := strings.Cut(members[0], ":")
	expiry, err := rdb.ZScore(ctx, "herald:replicas", instance).Result()
	if err != nil {
		t.Fatalf("the new instance's heartbeat: %v", err)
	}
	if now := redisNow(t, rdb); int64(expiry) <= now {
		t.Fatalf("the new instance's heartbeat expires at %d, before Redis's now %d", int64(expiry), now)
	}
	if got := rdb.HGet(ctx, "herald:replica:"+instance+":leases", members[0]).Val(); got != "u" {
		t.Fatalf("index entry of the new slot: %q, want u", got)
	}
}

// statField reads field (calls=…) from a commandstats line.
func statField(t *testing.T, line, field string) int {
	t.Helper()
	_, rest, ok := strings.Cut(line, ":"+field+"=")
	if !ok {
		_, rest, ok = strings.Cut(line, ","+field+"=")
	}
	v, _, _ := strings.Cut(rest, ",")
	n, err := strconv.Atoi(v)
	if !ok || err != nil {
		t.Fatalf("commandstats line %q: no %s", line, field)
	}
	return n
}
