package ratelimit_test

import (
	"context"
	"fmt"
	"slices"
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
	if len(members) != 2 || !strings.HasPrefix(members[0], "live-") || !strings.HasPrefix(members[1], "other-") {
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
// push the user over the limit; the replica stops renewing it. (b, the
// replica that takes the slot, is alive: it beats.)
func TestConcurrencyLostLease(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	a := mustConcurrency(t, srv.Client(), ratelimit.ConcurrencyConfig{Replica: "a", LeaseTTL: leaseTTL})
	b := mustConcurrency(t, srv.Client(), ratelimit.ConcurrencyConfig{Replica: "b", LeaseTTL: leaseTTL})
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { b.Run(runCtx) })
	t.Cleanup(func() { stop(); wg.Wait() })
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

// TestConcurrencyKeys checks the key shapes and the prefix: a user's
// slots named after the replica instance, the instance's heartbeat in the
// registry on Redis's clock and its lease index; and that Release removes
// the slot and its index entry at once.
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
	members := rdb.ZRange(ctx, "p1:herald:conns:42", 0, -1).Val()
	if len(members) != 1 || !strings.HasPrefix(members[0], "node-a-") {
		t.Fatalf("members %v, want one node-a-…", members)
	}
	instance, _, _ := strings.Cut(members[0], ":")
	zs := rdb.ZRangeWithScores(ctx, "p1:herald:replicas", 0, -1).Val()
	ttl := ratelimit.DefaultLeaseTTL.Milliseconds()
	if len(zs) != 1 || zs[0].Member != instance {
		t.Fatalf("registry %v, want the instance %s", zs, instance)
	}
	if s := int64(zs[0].Score); s < before+ttl || s > after+ttl {
		t.Errorf("heartbeat expiry %d outside Redis TIME + TTL [%d, %d]", s, before+ttl, after+ttl)
	}
	index := "p1:herald:replica:" + instance + ":leases"
	if got := rdb.HGetAll(ctx, index).Val(); len(got) != 1 || got[members[0]] != "42" {
		t.Fatalf("lease index %v, want %s → 42", got, members[0])
	}
	if err := c.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, "p1:herald:conns:42", index).Val(); n != 0 {
		t.Fatalf("%d keys still exist after the last Release", n)
	}
}

// TestConcurrencyReleasesTogether: releases that arrive together share
// their round trips, on one server (one pipeline, each slot before its
// index entry) and on a cluster (the slots, then the index entries); each
// frees its slot and its index entry.
func TestConcurrencyReleasesTogether(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rdb     func(t *testing.T) redis.UniversalClient
		ordered bool // one pipeline runs in order on one connection
	}{
		{"server", func(t *testing.T) redis.UniversalClient { return redistest.Start(t).Client() }, true},
		{"cluster", func(t *testing.T) redis.UniversalClient { return redistest.StartCluster(t, 3, 0).Client() }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb := tc.rdb(t)
			ctx := context.Background()
			c := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: "node-a"})
			const users, perUser = 40, 2
			leases := make([]ratelimit.Lease, users*perUser)
			var wg sync.WaitGroup
			for i := range leases {
				wg.Go(func() {
					l, r, err := c.Acquire(ctx, "u"+strconv.Itoa(i%users), perUser)
					if err != nil || !r.Allowed {
						t.Errorf("Acquire %d: %+v, %v", i, r, err)
					}
					leases[i] = l
				})
			}
			wg.Wait()
			member := rdb.ZRange(ctx, c.Key("u0"), 0, 0).Val()
			if len(member) != 1 {
				t.Fatalf("u0's slots: %v", member)
			}
			instance, _, _ := strings.Cut(member[0], ":")
			index := "herald:replica:" + instance + ":leases"
			if n := rdb.HLen(ctx, index).Val(); n != users*perUser {
				t.Fatalf("index holds %d leases, want %d", n, users*perUser)
			}

			rec := &pipelines{}
			rdb.AddHook(rec)
			ratelimittest.Concurrently(t, len(leases), func(i int) (ratelimit.Result, error) {
				return ratelimit.Result{}, c.Release(ctx, leases[i])
			})
			rec.check(t, len(leases), tc.ordered)
			if n := rdb.Exists(ctx, index).Val(); n != 0 {
				t.Errorf("index still holds %v", rdb.HGetAll(ctx, index).Val())
			}
			for u := range users {
				user := "u" + strconv.Itoa(u)
				if n := rdb.Exists(ctx, c.Key(user)).Val(); n != 0 {
					t.Errorf("%s's slots still hold %v", user, rdb.ZRange(ctx, c.Key(user), 0, -1).Val())
				}
			}
			if c.Held() != 0 || c.Pending() != 0 {
				t.Errorf("held %d, pending %d after releasing all", c.Held(), c.Pending())
			}
		})
	}
}

// pipelines is a go-redis hook that records the commands of each
// pipeline.
type pipelines struct {
	mu  sync.Mutex
	log [][]redis.Cmder
}

func (p *pipelines) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (p *pipelines) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (p *pipelines) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		p.mu.Lock()
		p.log = append(p.log, slices.Clone(cmds))
		p.mu.Unlock()
		return next(ctx, cmds)
	}
}

// ops returns, per pipeline, "NAME arg" for each of its commands named in
// names, arg being the command's argument at position at.
func (p *pipelines) ops(at int, names ...string) [][]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([][]string, len(p.log))
	for i, cmds := range p.log {
		for _, cmd := range cmds {
			if slices.Contains(names, cmd.Name()) && len(cmd.Args()) > at {
				out[i] = append(out[i], strings.ToUpper(cmd.Name())+" "+fmt.Sprint(cmd.Args()[at]))
			}
		}
	}
	return out
}

// check holds the pipelines of n releases to what removeSlots promises:
// fewer pipelines than releases, and each member's HDEL after its ZREM, in
// the same pipeline where ordered, in a later one elsewhere.
func (p *pipelines) check(t *testing.T, n int, ordered bool) {
	t.Helper()
	log := p.ops(2, "zrem", "hdel") // their member
	type at struct{ pipeline, pos int }
	zrem, hdel := map[string]at{}, map[string]at{}
	for i, ops := range log {
		for j, op := range ops {
			verb, member, _ := strings.Cut(op, " ")
			if verb == "ZREM" {
				zrem[member] = at{i, j}
			} else {
				hdel[member] = at{i, j}
			}
		}
	}
	if len(zrem) != n || len(hdel) != n {
		t.Fatalf("%d ZREM and %d HDEL for %d releases", len(zrem), len(hdel), n)
	}
	if pipelinesWithZrem := len(slices.DeleteFunc(log, func(ops []string) bool {
		return !slices.ContainsFunc(ops, func(op string) bool { return strings.HasPrefix(op, "ZREM ") })
	})); pipelinesWithZrem >= n {
		t.Errorf("%d releases took %d pipelines: none shared", n, pipelinesWithZrem)
	}
	for m, z := range zrem {
		h := hdel[m]
		switch {
		case ordered && (h.pipeline != z.pipeline || h.pos < z.pos):
			t.Errorf("%s: HDEL at %v, ZREM at %v: want the same pipeline, after", m, h, z)
		case !ordered && h.pipeline <= z.pipeline:
			t.Errorf("%s: HDEL in pipeline %d, ZREM in %d: want a later one", m, h.pipeline, z.pipeline)
		}
	}
}

// TestConcurrencyReleaseRefused: a slot's removal that Redis refuses for
// a reason that may pass (here NOPERM; READONLY, LOADING, CLUSTERDOWN
// alike) fails the Release, which then frees the slot at a later beat,
// rather than taking it for done and leaving a slot that nobody frees.
func TestConcurrencyReleaseRefused(t *testing.T) {
	rdb := redistest.Start(t).Client()
	ctx := context.Background()
	c := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: "r"})
	l, r, err := c.Acquire(ctx, "u", 2)
	if err != nil || !r.Allowed {
		t.Fatalf("Acquire: %+v, %v", r, err)
	}
	acl := func(rule string) {
		t.Helper()
		if err := rdb.Do(ctx, "ACL", "SETUSER", "default", rule).Err(); err != nil {
			t.Fatal(err)
		}
	}
	acl("-zrem")
	if err := c.Release(ctx, l); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("Release with ZREM refused: %v, want a NOPERM error", err)
	}
	if n := rdb.ZCard(ctx, c.Key("u")).Val(); n != 1 || c.Pending() != 1 {
		t.Fatalf("after the refused release: %d slots, %d pending; want 1 and 1", n, c.Pending())
	}
	acl("+zrem")
	ratelimittest.WaitFor(t, 10*time.Second, "the refused release retried", func() bool {
		c.Renew(ctx)
		return rdb.Exists(ctx, c.Key("u")).Val() == 0 && c.Pending() == 0
	})
	if keys := rdb.Keys(ctx, "herald:replica:*:leases").Val(); len(keys) != 0 {
		t.Fatalf("index entries left: %v", keys)
	}
}

// TestConcurrencyHeartbeatIsPerReplica: a replica's heartbeat writes one
// key, however many slots it holds: users' keys are not touched.
func TestConcurrencyHeartbeatIsPerReplica(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	c := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: "r"})
	for i := range 1000 {
		if _, _, err := c.Acquire(ctx, fmt.Sprint("u", i), 5); err != nil {
			t.Fatal(err)
		}
	}
	rdb.ConfigResetStat(ctx)
	if err := c.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	stats := rdb.Info(ctx, "commandstats").Val()
	for _, cmd := range []string{"zadd", "zrem", "hset", "pexpire", "pexpireat"} {
		if line := statLine(stats, cmd); line != "" && !strings.Contains(line, "calls=1,") && cmd == "zadd" {
			t.Errorf("heartbeat: %s, want one ZADD", line)
		} else if line != "" && cmd != "zadd" {
			t.Errorf("heartbeat of 1,000 slots ran %s", line)
		}
	}
	if c.Held() != 1000 {
		t.Errorf("holds %d leases, want 1000", c.Held())
	}
}

func statLine(stats, cmd string) string {
	for _, line := range strings.Split(stats, "\n") {
		if strings.HasPrefix(line, "cmdstat_"+cmd+":") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// One user's key that the sweep cannot handle (overwritten with another
// type) must not keep the slots of a dead replica's other users taken.
func TestSweepSurvivesOneBadKey(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	dead := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: "dead", LeaseTTL: leaseTTL})
	live := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: "live", LeaseTTL: leaseTTL})
	const users = 2000
	for i := range users {
		if _, _, err := dead.Acquire(ctx, fmt.Sprint("u", i), 5); err != nil {
			t.Fatal(err)
		}
	}
	rdb.Set(ctx, dead.Key("u7"), "x", 0) // one bad key (WRONGTYPE for ZREM)
	var err error
	ratelimittest.WaitFor(t, 10*time.Second, "the dead replica's heartbeat to expire and be swept", func() bool {
		err = live.Renew(ctx)
		return rdb.Exists(ctx, dead.Key("u0")).Val() == 0
	})
	if err == nil {
		t.Error("sweep with a bad key: got nil error, want it reported")
	}
	taken := 0
	for i := range users {
		if i != 7 && rdb.Exists(ctx, dead.Key(fmt.Sprint("u", i))).Val() != 0 {
			taken++
		}
	}
	if taken > 0 {
		t.Fatalf("%d users' slots stayed taken because of one bad key", taken)
	}
	if n := rdb.ZCard(ctx, "herald:replicas").Val(); n != 1 {
		t.Errorf("registry holds %d instances after the sweep, want 1 (live)", n)
	}
}

// TestConcurrencyReleaseRetriedAfterOutage: a Release that fails while
// Redis is down does not leave its slot taken for the replica's life: once
// Redis is back (with its data: an append-only file), the next beats free
// it, and the user's cap is exact again.
func TestConcurrencyReleaseRetriedAfterOutage(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	rdb := srv.Client()
	ctx := context.Background()
	c := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: "r"})
	other := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: "o"})
	l1, r1, err1 := c.Acquire(ctx, "u", 2)
	_, r2, err2 := c.Acquire(ctx, "u", 2)
	if err1 != nil || err2 != nil || !r1.Allowed || !r2.Allowed {
		t.Fatalf("Acquire: %v %v, %v %v", r1, err1, r2, err2)
	}

	srv.Kill()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := c.Release(rctx, l1)
	cancel()
	if err == nil {
		t.Fatal("Release with Redis down: no error")
	}
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if _, _, err := c.Acquire(actx, "u", 2); err == nil {
		t.Fatal("Acquire with Redis down: no error")
	}
	cancel()
	srv.Restart()
	if n := rdb.ZCard(ctx, c.Key("u")).Val(); n != 2 {
		t.Fatalf("ZCARD %d after the restart, want 2: the append-only file kept both slots", n)
	}

	ratelimittest.WaitFor(t, 10*time.Second, "the failed release retried", func() bool {
		c.Renew(ctx)
		return rdb.ZCard(ctx, c.Key("u")).Val() == 1 && c.Pending() == 0
	})
	if c.Held() != 1 {
		t.Fatalf("holds %d leases, want 1", c.Held())
	}
	if _, r, err := other.Acquire(ctx, "u", 2); err != nil || !r.Allowed {
		t.Fatalf("the freed slot: %+v, %v; want admitted", r, err)
	}
	if _, r, err := other.Acquire(ctx, "u", 2); err != nil || r.Allowed {
		t.Fatalf("a third slot of 2: %+v, %v; want refused", r, err)
	}
	if err := c.Release(ctx, l1); err != nil {
		t.Fatalf("releasing again: %v", err)
	}
	if n := rdb.ZCard(ctx, c.Key("u")).Val(); n != 2 {
		t.Fatalf("releasing the lease again freed another slot: ZCARD %d", n)
	}
}

// TestConcurrencyReincarnationRetakesLeases: a live replica swept as dead
// (it missed its heartbeats for the lease TTL) takes its leases again
// under its new instance at its next beat, so its sockets count against
// their users' caps again; a lease whose user filled the cap meanwhile is
// lost and reported, and releasing it frees nobody else's slot.
func TestConcurrencyReincarnationRetakesLeases(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	var mu sync.Mutex
	var lost []ratelimit.Lease
	a := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: "a", LeaseTTL: leaseTTL, OnLost: func(l ratelimit.Lease) {
		mu.Lock()
		lost = append(lost, l)
		mu.Unlock()
	}})
	b := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: "b", LeaseTTL: leaseTTL})
	acquire := func(c *ratelimit.Concurrency, user string, limit int) (ratelimit.Lease, bool) {
		t.Helper()
		l, r, err := c.Acquire(ctx, user, limit)
		if err != nil {
			t.Fatal(err)
		}
		return l, r.Allowed
	}
	// u: cap 3, a holds 2; w: cap 2, a holds 2.
	var wLeases []ratelimit.Lease
	for range 2 {
		if _, ok := acquire(a, "u", 3); !ok {
			t.Fatal("u refused")
		}
		l, ok := acquire(a, "w", 2)
		if !ok {
			t.Fatal("w refused")
		}
		wLeases = append(wLeases, l)
	}
	// a stops beating; b finds it dead and frees its slots.
	ratelimittest.WaitFor(t, 10*time.Second, "a's slots swept", func() bool {
		b.Renew(ctx)
		return rdb.Exists(ctx, a.Key("u"), a.Key("w")).Val() == 0
	})
	if _, ok := acquire(b, "u", 3); !ok {
		t.Fatal("b: u refused after the sweep")
	}
	if _, ok := acquire(b, "w", 2); !ok {
		t.Fatal("b: w refused after the sweep")
	}

	if err := a.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if n := rdb.ZCard(ctx, a.Key("u")).Val(); n != 3 {
		t.Errorf("u holds %d slots after a's return, want 3 (a's two again, b's one)", n)
	}
	if n := rdb.ZCard(ctx, a.Key("w")).Val(); n != 2 {
		t.Errorf("w holds %d slots after a's return, want 2 (the cap)", n)
	}
	if a.Held() != 3 {
		t.Errorf("a holds %d leases, want 3", a.Held())
	}
	mu.Lock()
	gone := slices.Clone(lost)
	mu.Unlock()
	if len(gone) != 1 || !slices.Contains(wLeases, gone[0]) {
		t.Fatalf("lost %v, want one of w's leases", gone)
	}
	if _, ok := acquire(b, "u", 3); ok {
		t.Error("u: a fourth slot of 3 admitted")
	}
	if _, ok := acquire(b, "w", 2); ok {
		t.Error("w: a third slot of 2 admitted")
	}
	if err := a.Release(ctx, gone[0]); err != nil {
		t.Fatal(err)
	}
	if n := rdb.ZCard(ctx, a.Key("w")).Val(); n != 2 {
		t.Errorf("releasing the lost lease changed w's slots to %d, want 2", n)
	}
	// The slots are a's new instance's: its index lists them, and a
	// sweep of the old one frees nothing.
	members := rdb.ZRange(ctx, a.Key("u"), 0, -1).Val()
	instances := map[string]bool{}
	for _, m := range members {
		inst, _, _ := strings.Cut(m, ":")
		instances[inst] = true
	}
	if len(instances) != 2 {
		t.Errorf("u's members %q, want those of two instances (a's new one, b's)", members)
	}
}

// pacedConcurrency is a limiter whose beats are paced by a clock the test
// moves (memory_test.go).
func pacedConcurrency(t *testing.T, rdb redis.Cmdable, name string) (*ratelimit.Concurrency, *clock) {
	t.Helper()
	c := mustConcurrency(t, rdb, ratelimit.ConcurrencyConfig{Replica: name, LeaseTTL: leaseTTL})
	clk := newClock()
	ratelimit.SetClock(c, clk.Now)
	return c, clk
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
	c, clk := pacedConcurrency(t, rdb, "a")
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
	clk.Set(leaseTTL.Milliseconds()/3 - 1)
	acquire("fresh, just", 1)
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	rdb.ConfigResetStat(ctx)
	if _, r, err := c.Acquire(ctx, "u", 10); err != nil || !r.Allowed {
		t.Fatalf("after SCRIPT FLUSH: Acquire: %+v, %v", r, err)
	}
	clk.Set(leaseTTL.Milliseconds() / 3)
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
	a, clk := pacedConcurrency(t, rdb, "a")
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
	clk.Set(leaseTTL.Milliseconds())
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
