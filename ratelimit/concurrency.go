package ratelimit

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/batch"
)

// pipelinesInFlight is how many pipelines of Acquires (Concurrency.takes),
// and of Releases (Concurrency.gives), may be under way at once.
const pipelinesInFlight = 4

// Defaults of ConcurrencyConfig.
const (
	DefaultLeaseTTL              = 30 * time.Second
	DefaultConcurrencyRetryAfter = 5 * time.Second
)

// ConcurrencyConfig configures a concurrency limiter, in Redis or in memory.
type ConcurrencyConfig struct {
	// Prefix is the prefix of Herald's own Redis keys (HERALD_KEY_PREFIX):
	// a user's slots live in the sorted set Prefix+"herald:conns:"+user.
	// Default empty.
	Prefix string
	// Replica names this process in the names of its leases and
	// heartbeat ("{Replica}-{random}:{random}"), for people reading Redis.
	// The random part makes every process a new instance, so a replica
	// restarted under the same name never inherits the slots of the one
	// that died. Default: random.
	Replica string
	// LeaseTTL bounds how long the slots of a replica that died without
	// releasing them stay taken: a replica is dead once its heartbeat is
	// LeaseTTL old, and the living then free its slots. Live replicas
	// beat every LeaseTTL/3 (see [Concurrency.Run]): one write per
	// replica, however many slots it holds. Default 30 s; the memory twin
	// ignores it: its leases die with the process.
	LeaseTTL time.Duration
	// RetryAfter is the hint (Result.RetryAfter and Reset) given to a
	// refused caller: slots free when their holders leave, not on a
	// schedule. Default 5 s.
	RetryAfter time.Duration
	// OnLost is told of each lease this replica held but lost: after the
	// replica could not beat for LeaseTTL (its slots were freed by
	// others), Run takes its leases again under a new instance, and a
	// lease whose user meanwhile filled their cap elsewhere is lost. Its
	// connection should then be closed; releasing it is a no-op. Called
	// on Run's goroutine: it must not block. Nil: nobody is told. The
	// memory twin never loses a lease.
	OnLost func(Lease)
}

func (c *ConcurrencyConfig) check() error {
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.LeaseTTL < 3*time.Millisecond {
		return fmt.Errorf("lease ttl %v, want ≥ 3ms: %w", c.LeaseTTL, ErrInvalidArgument)
	}
	if c.RetryAfter == 0 {
		c.RetryAfter = DefaultConcurrencyRetryAfter
	}
	if c.RetryAfter < 0 {
		return fmt.Errorf("retry after %v, want > 0: %w", c.RetryAfter, ErrInvalidArgument)
	}
	if c.Replica == "" {
		c.Replica = rand.Text()[:8]
	}
	return nil
}

func checkLimit(limit int) error {
	if limit < 1 {
		return fmt.Errorf("ratelimit: concurrency limit %d, want ≥ 1: %w", limit, ErrInvalidArgument)
	}
	return nil
}

// concResult builds the Result of both concurrency limiters.
func concResult(allowed bool, limit int, count int64, retryAfter time.Duration) Result {
	r := Result{Allowed: allowed, Limit: limit, Remaining: max(limit-int(count), 0)}
	if !allowed {
		r.Reset, r.RetryAfter = retryAfter, retryAfter
	}
	return r
}

// A Lease is one slot held by [Concurrency.Acquire] (or the memory twin's).
// Give it back with Release on the limiter that issued it. The zero Lease
// holds nothing; releasing it is a no-op.
type Lease struct {
	user string
	id   string // names the lease in its limiter; "" for the zero Lease
}

// liveScore is the score of every lease: a lease lives as long as its
// replica's heartbeat, whatever its score. (It is far in the future so
// that replicas of earlier versions, which scored a lease by its expiry,
// leave it alone; theirs expire by their score.)
const liveScore = 1 << 52

// acquireScript takes a slot if the user holds fewer than limit live ones, in
// one atomic step. Leases of replicas known dead (ARGV[5..], whose members
// start with "{id}:") are dropped before counting, as are leases of
// earlier versions whose expiry score passed, and the member ARGV[4] (the
// same lease under the instance that held it before, when a replica takes
// its leases again; "" for none). A member already present is a go-redis
// retry of this very call: it is admitted again without counting twice.
//
// KEYS[1] the user's sorted set; ARGV[1] limit; ARGV[2] member; ARGV[3]
// liveScore; ARGV[4] the member it replaces, or ""; ARGV[5..] dead replica
// instances. Returns {allowed 0|1, slots held after}.
var acquireScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[4] and ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[4])
end
if #ARGV > 4 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    for i = 5, #ARGV do
      local p = ARGV[i] .. ':'
      if string.sub(m, 1, #p) == p then redis.call('ZREM', KEYS[1], m) end
    end
  end
end
local count = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return {1, count}
end
if count >= tonumber(ARGV[1]) then
  return {0, count}
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return {1, count + 1}
`)

// Concurrency limits the slots a user holds at once across every replica
// sharing a Redis, such as open sockets per user. A slot is a member of the
// user's sorted set, named after the replica instance that holds it.
// Whether it is still held depends on that instance only: each instance
// keeps a heartbeat in the registry (Prefix+"herald:replicas", a sorted
// set of instances scored by when their heartbeat expires) and an index of
// its leases (Prefix+"herald:replica:{instance}:leases", a hash lease →
// user). [Concurrency.Run] beats every LeaseTTL/3 — one write per replica,
// whatever the number of sockets — and frees the leases of instances whose
// heartbeat expired, through their index; an Acquire drops the leases of
// the dead instances Run found from the user's set too. So a replica that
// dies frees its slots within about LeaseTTL plus one beat, while Release
// frees a slot at once.
//
// Nothing held by a live replica is ever left behind: a Release that
// failed, and an Acquire that failed after its slot may have been taken
// (the reply lost, the context cancelled), leave the slot in a pending
// set that each beat removes (by its unique member, so repeating it is
// harmless). A replica found dead while alive (it could not beat for
// LeaseTTL) takes its leases again under a new instance at its next beat,
// within the users' caps; the leases that no longer fit are lost
// (ConcurrencyConfig.OnLost). Every operation touches one key, so it works
// on a Redis Cluster. It is safe for concurrent use.
type Concurrency struct {
	rdb redis.Cmdable
	cfg ConcurrencyConfig
	log *slog.Logger

	now func() time.Time // the process's clock, to pace this instance's own beats only (concurrency_pace.go)
	// ordered: one pipeline runs on one connection, in order (a single
	// server or Sentinel's primary), not split over a cluster's nodes.
	ordered bool
	// takes are the index entries and slots of the Acquires that skip
	// their beat: those that arrive together share one pipeline.
	takes batch.Combiner[heldLease, takeResult]
	// gives are the Releases that arrive together: their slots and index
	// entries go out in one pipeline (removeSlots).
	gives batch.Combiner[heldLease, error]

	mu         sync.Mutex
	instance   string                 // guarded by mu; this process's name in Redis, renewed when found dead
	registered bool                   // guarded by mu; instance has a heartbeat
	beatSent   time.Time              // guarded by mu; when the newest beat of instance that Redis confirmed was sent
	held       map[string]heldLease   // guarded by mu; lease id → its slot, of every lease held
	pending    map[string]pendingSlot // guarded by mu; member → slots to remove from Redis (see Concurrency)
	dead       []string               // guarded by mu; instances Run last found dead
}

// heldLease is where a lease's slot is in Redis: the member
// instance+":"+id of the user's set, entered in instance's index.
type heldLease struct {
	user, id, instance string
	limit              int // the cap it was taken under, to take it again
}

func (h heldLease) member() string { return h.instance + ":" + h.id }

// pendingSlot is a slot, and its index entry, to remove from Redis.
type pendingSlot struct {
	heldLease
	aged bool // it has waited one beat (flushPending)
}

// NewConcurrency returns a concurrency limiter on rdb that logs heartbeat
// trouble to log (nil: discard). Call Run for as long as leases are held.
// It reports an error wrapping ErrInvalidArgument for a bad cfg.
func NewConcurrency(rdb redis.Cmdable, cfg ConcurrencyConfig, log *slog.Logger) (*Concurrency, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	_, ordered := rdb.(*redis.Client)
	c := &Concurrency{
		rdb: rdb, cfg: cfg, log: log, now: processClock, ordered: ordered, instance: newInstance(cfg.Replica),
		held: make(map[string]heldLease), pending: make(map[string]pendingSlot),
	}
	c.takes = batch.Combiner[heldLease, takeResult]{Run: c.indexAndTake, MaxWeight: maxBucketBatch, Timeout: bucketCallTimeout, Concurrency: pipelinesInFlight}
	c.gives = batch.Combiner[heldLease, error]{Run: c.removeSlots, MaxWeight: maxBucketBatch, Timeout: bucketCallTimeout, Concurrency: pipelinesInFlight}
	return c, nil
}

// newInstance names one run of a replica.
func newInstance(replica string) string { return replica + "-" + rand.Text()[:8] }

// Key returns the Redis key that holds user's slots.
func (c *Concurrency) Key(user string) string { return c.cfg.Prefix + "herald:conns:" + user }

// registryKey is the sorted set of replica instances by heartbeat expiry.
func (c *Concurrency) registryKey() string { return c.cfg.Prefix + "herald:replicas" }

// indexKey is the hash of an instance's leases (member → user).
func (c *Concurrency) indexKey(instance string) string {
	return c.cfg.Prefix + "herald:replica:" + instance + ":leases"
}

// sweepKey is the lock of the sweep of a dead instance's leases.
func (c *Concurrency) sweepKey(instance string) string {
	return c.cfg.Prefix + "herald:replica:" + instance + ":sweep"
}

// Acquire takes one of user's limit slots if one is free, and returns its
// lease. When refused, the Lease is zero and Result.RetryAfter is the
// configured hint. limit is per call, so it may depend on the user; it must
// be ≥ 1, or the error wraps ErrInvalidArgument.
//
// A slot is always taken by an instance that is alive for the remaining
// lease, and is freed if the process dies: the lease's entry in the
// instance's index is written before the slot, and the instance has a
// heartbeat that lasts at least 2/3 LeaseTTL more. When this instance's
// newest confirmed beat was sent less than LeaseTTL/3 ago, that holds
// already (a beat lasts LeaseTTL from when Redis ran it, which is after it
// was sent), and the index entry and the acquire script go in one pipeline
// (in order, on one connection), which the Acquires that arrive together
// share; on a cluster in two round trips. Otherwise Acquire beats first,
// in the same round trip as the index entry. On an error the slot may
// still have been taken in Redis (the reply was lost): Run frees it at its
// next beat.
func (c *Concurrency) Acquire(ctx context.Context, user string, limit int) (Lease, Result, error) {
	if err := checkLimit(limit); err != nil {
		return Lease{}, Result{}, err
	}
	h := heldLease{user: user, id: rand.Text(), limit: limit}
	v, err := c.acquire(ctx, &h)
	if err != nil {
		c.forget(h) // the index entry may be in, the script may have run
		return Lease{}, Result{}, err
	}
	r := concResult(v[0] == 1, limit, v[1], c.cfg.RetryAfter)
	if !r.Allowed {
		// Its index entry: stale, it frees nothing, but it takes memory.
		// (It has no slot: the script refuses before it adds one.)
		if err := c.rdb.HDel(ctx, c.indexKey(h.instance), h.member()).Err(); err != nil {
			c.forget(h)
		}
		return Lease{}, r, nil
	}
	// Held under the instance it was taken by, even if that instance was
	// found dead meanwhile (this call stalled): Run then takes it again.
	c.mu.Lock()
	c.held[h.id] = h
	c.mu.Unlock()
	return Lease{user: user, id: h.id}, r, nil
}

// acquire names h's instance, enters h in its index and runs the acquire
// script for it, beating first unless the instance's beat is fresh (see
// Acquire), and returns the script's reply.
func (c *Concurrency) acquire(ctx context.Context, h *heldLease) ([]int64, error) {
	c.mu.Lock()
	h.instance = c.instance
	fresh := c.registered && c.now().Sub(c.beatSent) < c.cfg.LeaseTTL/3
	c.mu.Unlock()
	switch {
	case fresh && c.ordered:
		r, err := c.takes.Do(ctx, "", *h)
		if err == nil {
			err = r.err
		}
		if err != nil {
			return nil, fmt.Errorf("ratelimit: concurrency index and acquire script: %w", err)
		}
		return r.reply, nil
	case fresh:
		if err := c.rdb.HSet(ctx, c.indexKey(h.instance), h.member(), h.user).Err(); err != nil {
			return nil, fmt.Errorf("ratelimit: concurrency index: %w", err)
		}
	default:
		if err := c.beatIndexed(ctx, h); err != nil {
			return nil, err
		}
	}
	v, err := takeReply(acquireScript.Run(ctx, c.rdb, []string{c.Key(h.user)}, c.takeArgs(*h, "", c.deadInstances())...))
	if err != nil {
		return nil, fmt.Errorf("ratelimit: concurrency acquire script: %w", err)
	}
	return v, nil
}

// beatIndexed beats this instance and enters h in its index, in one round
// trip; when the instance turns out dead, it carries on as a new instance
// (h's instance from then on) and tries once more.
func (c *Concurrency) beatIndexed(ctx context.Context, h *heldLease) error {
	for attempt := 0; ; attempt++ {
		c.mu.Lock()
		instance, first := c.instance, !c.registered
		c.mu.Unlock()
		h.instance = instance
		alive, err := c.beatAndIndex(ctx, *h, first)
		if err != nil || alive {
			return err
		}
		c.forget(*h) // its instance is dead: a stale index entry
		c.reincarnate(instance)
		if attempt > 0 {
			return errors.New("ratelimit: concurrency: this replica's heartbeat keeps expiring")
		}
	}
}

// beatAndIndex beats h's instance and enters h in its index, in one round
// trip. It reports whether the instance is alive.
func (c *Concurrency) beatAndIndex(ctx context.Context, h heldLease, first bool) (bool, error) {
	var beat *redis.Cmd
	var index *redis.IntCmd
	sent := c.now()
	err := pipelined(ctx, c.rdb, heartbeatScript, func(p redis.Pipeliner) {
		beat = heartbeatScript.EvalSha(ctx, p, []string{c.registryKey()}, h.instance, c.cfg.LeaseTTL.Milliseconds(), flag(first))
		index = p.HSet(ctx, c.indexKey(h.instance), h.member(), h.user)
	})
	if err != nil {
		return false, fmt.Errorf("ratelimit: concurrency heartbeat and index: %w", err)
	}
	if index.Err() != nil {
		return false, fmt.Errorf("ratelimit: concurrency index: %w", index.Err())
	}
	alive, _ := beat.Int()
	if alive == 1 {
		c.beaten(h.instance, sent)
	}
	return alive == 1, nil
}

// indexAndTake enters each lease in its instance's index and runs the
// acquire script for it, in that order, all in one pipeline on one
// connection (so only where c.ordered): the Acquires that arrive together
// share one round trip (c.takes). It returns each script's reply, or the
// error of its lease.
func (c *Concurrency) indexAndTake(ctx context.Context, _ string, hs []heldLease) ([]takeResult, error) {
	dead := c.deadInstances()
	index := make([]*redis.IntCmd, len(hs))
	take := make([]*redis.Cmd, len(hs))
	// Both commands are safe to repeat: pipelined may run them twice.
	_ = pipelined(ctx, c.rdb, acquireScript, func(p redis.Pipeliner) {
		for i, h := range hs {
			index[i] = p.HSet(ctx, c.indexKey(h.instance), h.member(), h.user)
			take[i] = acquireScript.EvalSha(ctx, p, []string{c.Key(h.user)}, c.takeArgs(h, "", dead)...)
		}
	})
	out := make([]takeResult, len(hs))
	for i := range hs {
		if err := index[i].Err(); err != nil {
			out[i].err = fmt.Errorf("index: %w", err)
			continue
		}
		out[i].reply, out[i].err = takeReply(take[i])
	}
	return out, nil
}

// takeResult is the outcome of one lease's index entry and acquire script.
type takeResult struct {
	reply []int64
	err   error
}

// takeArgs are the acquire script's arguments for h, replacing the member
// old ("" for none), with dead the instances known dead.
func (c *Concurrency) takeArgs(h heldLease, old string, dead []string) []any {
	args := make([]any, 0, 4+len(dead))
	args = append(args, h.limit, h.member(), liveScore, old)
	for _, d := range dead {
		args = append(args, d)
	}
	return args
}

// takeReply reads the acquire script's reply: {allowed 0|1, slots held}.
func takeReply(cmd *redis.Cmd) ([]int64, error) {
	v, err := cmd.Int64Slice()
	if err == nil && len(v) != 2 {
		err = fmt.Errorf("returned %d values, want 2", len(v))
	}
	return v, err
}

// pipelined runs fill's commands on rdb in one pipeline and returns its
// first error. Scripts are not loaded inside pipelines: when a command
// answers NOSCRIPT, script is loaded (on every server rdb may send it to)
// and fill's commands run once more, so they must be safe to repeat, and
// fill must keep the commands of its last call. When a command still
// answers NOSCRIPT then, the error is the load's, wrapping errScriptLoad.
func pipelined(ctx context.Context, rdb redis.Cmdable, script *redis.Script, fill func(p redis.Pipeliner)) error {
	run := func() ([]redis.Cmder, error) {
		return rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			fill(p)
			return nil
		})
	}
	noScript := func(cmd redis.Cmder) bool { return redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") }
	cmds, err := run()
	if !slices.ContainsFunc(cmds, noScript) {
		return err
	}
	// Run again even when a server refused the load: the commands for the
	// others go through (a Ring reports one shard's failure for all).
	loadErr := loadScript(ctx, rdb, script)
	cmds, err = run()
	if loadErr != nil && slices.ContainsFunc(cmds, noScript) {
		return fmt.Errorf("%w: %w", errScriptLoad, loadErr)
	}
	return err
}

// errScriptLoad marks pipelined's error when a script could not be loaded.
var errScriptLoad = errors.New("loading the script")

// loadScript loads script on every server rdb may send it to: go-redis
// sends SCRIPT LOAD to every node of a cluster, but to one shard of a Ring.
func loadScript(ctx context.Context, rdb redis.Cmdable, script *redis.Script) error {
	if ring, ok := rdb.(*redis.Ring); ok {
		return ring.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
			return script.Load(ctx, c).Err()
		})
	}
	return script.Load(ctx, rdb).Err()
}

// forget puts h's slot and index entry in the pending set, for Run to
// remove.
func (c *Concurrency) forget(h heldLease) {
	c.mu.Lock()
	c.pending[h.member()] = pendingSlot{heldLease: h}
	c.mu.Unlock()
}

// Release frees the lease's slot at once. Releasing a lease twice, a lease
// lost (ConcurrencyConfig.OnLost), or the zero Lease, is a no-op. Pass a
// context that outlives the connection being closed. Releases that
// arrive together share their round trips. When Release fails (Redis
// unreachable or refusing, or ctx ended before the release went out), the
// slot is freed by Run, at the first beat that reaches Redis.
func (c *Concurrency) Release(ctx context.Context, l Lease) error {
	if l.id == "" {
		return nil
	}
	c.mu.Lock()
	h, ok := c.held[l.id]
	delete(c.held, l.id)
	c.mu.Unlock()
	if !ok {
		return nil
	}
	if err := c.remove(ctx, h); err != nil {
		c.forget(h)
		return fmt.Errorf("ratelimit: concurrency release (Run retries it): %w", err)
	}
	return nil
}

// remove deletes h's slot, then its index entry, with the removals that
// arrive alongside it (c.gives, removeSlots).
func (c *Concurrency) remove(ctx context.Context, h heldLease) error {
	err, callErr := c.gives.Do(ctx, "", h)
	if callErr != nil {
		return callErr
	}
	return err
}

// removeSlots deletes the slots of hs, then their index entries: a crash
// in between leaves an index entry that frees nothing, never a slot that
// nobody frees. Where c.ordered that is one pipeline, whose commands run
// in order on one connection; on a cluster, whose nodes run a pipeline's
// commands in parallel, a pipeline of the slots and then one of the index
// entries whose slot is gone. It returns each lease's error: nil when
// both are gone, or their key holds another type (so no slot; see done).
// Both commands are safe to repeat.
func (c *Concurrency) removeSlots(ctx context.Context, _ string, hs []heldLease) ([]error, error) {
	zrem := make([]*redis.IntCmd, len(hs))
	hdel := make([]*redis.IntCmd, len(hs))
	_, _ = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, h := range hs {
			zrem[i] = p.ZRem(ctx, c.Key(h.user), h.member())
			if c.ordered {
				hdel[i] = p.HDel(ctx, c.indexKey(h.instance), h.member())
			}
		}
		return nil
	})
	if !c.ordered {
		_, _ = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, h := range hs {
				if done(zrem[i].Err()) {
					hdel[i] = p.HDel(ctx, c.indexKey(h.instance), h.member())
				}
			}
			return nil
		})
	}
	errs := make([]error, len(hs))
	for i := range hs {
		switch {
		case !done(zrem[i].Err()):
			errs[i] = zrem[i].Err()
		case hdel[i] != nil && !done(hdel[i].Err()):
			errs[i] = fmt.Errorf("index: %w", hdel[i].Err())
		}
	}
	return errs, nil
}

// Held reports how many leases this limiter holds.
func (c *Concurrency) Held() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.held)
}

// Pending reports how many slots this limiter still has to remove from
// Redis: releases that failed, and acquires that failed after their slot
// may have been taken. Run removes them at its next beats.
func (c *Concurrency) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}
