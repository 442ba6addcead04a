package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// heartbeatScript pushes an instance's heartbeat to now + ttl on Redis's
// clock. An instance whose heartbeat already expired is dead for good
// (others may be freeing its slots): it is not brought back, and 0 is
// returned, so that the process carries on as a new instance. A first
// beat (ARGV[3] = 1) registers a new instance.
//
// KEYS[1] the registry; ARGV[1] instance; ARGV[2] ttl, ms; ARGV[3] 1 for
// the first beat. Returns 1, or 0 when the instance is dead.
var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[3] ~= '1' and not (s and tonumber(s) > now) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
`)

// deadScript lists the instances whose heartbeat expired, on Redis's
// clock. KEYS[1] the registry.
var deadScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
`)

// sweepBatch is how many leases of a dead instance one pipeline frees.
const sweepBatch = 500

// Run keeps this instance's heartbeat and frees the slots of dead
// instances, every LeaseTTL/3, until ctx is done (see Renew). It must run
// while leases are held, or other replicas free them after LeaseTTL.
// Failures are logged and retried at the next tick; two ticks may fail
// before the instance is taken for dead.
func (c *Concurrency) Run(ctx context.Context) {
	every := c.cfg.LeaseTTL / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, every)
		err := c.Renew(rctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			c.log.Warn("concurrency heartbeat or sweep failed", "err", err)
		}
	}
}

// Renew beats once: it pushes this instance's heartbeat to LeaseTTL from
// now (one write, however many leases it holds), removes the slots left
// pending by failed releases and acquires, and frees the leases of
// instances whose heartbeat expired. An instance found dead itself (it
// could not beat for LeaseTTL, and its slots may have been freed) carries
// on as a new instance and takes its leases again under it, each within
// its user's cap: a lease that no longer fits is lost and reported to
// ConcurrencyConfig.OnLost. A lease whose Acquire stalled past its
// instance's death is taken again the same way.
func (c *Concurrency) Renew(ctx context.Context) error {
	c.mu.Lock()
	instance, first := c.instance, !c.registered
	c.mu.Unlock()
	alive, err := c.beat(ctx, instance, first)
	if err != nil {
		return err
	}
	if !alive {
		c.reincarnate(instance)
		c.mu.Lock()
		instance = c.instance
		c.mu.Unlock()
		if _, err := c.beat(ctx, instance, true); err != nil {
			return err
		}
	}
	var errs []error
	if err := c.retake(ctx, instance); err != nil {
		errs = append(errs, fmt.Errorf("take leases again: %w", err))
	}
	if err := c.flushPending(ctx); err != nil {
		errs = append(errs, fmt.Errorf("free pending slots: %w", err))
	}
	dead, err := c.readDead(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, d := range dead {
		if err := c.sweep(ctx, d); err != nil {
			errs = append(errs, fmt.Errorf("free the slots of %s: %w", d, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ratelimit: %w", err)
	}
	return nil
}

// retake takes the leases held under an instance other than instance (one
// found dead) again under instance, which has a heartbeat: each lease's
// index entry first, then its slot, replacing the old member, within its
// user's cap. A lease that does not fit any more is dropped and reported
// to OnLost; one whose script failed is tried again at the next beat
// (the script is idempotent).
func (c *Concurrency) retake(ctx context.Context, instance string) error {
	c.mu.Lock()
	var stale []heldLease
	for _, h := range c.held {
		if h.instance != instance {
			stale = append(stale, h)
		}
	}
	c.mu.Unlock()
	var errs []error
	retaken, lost := 0, 0
	for len(stale) > 0 {
		batch := stale[:min(len(stale), sweepBatch)]
		stale = stale[len(batch):]
		r, l, err := c.retakeBatch(ctx, instance, batch)
		retaken, lost = retaken+r, lost+l
		if err != nil {
			errs = append(errs, err)
		}
	}
	if retaken+lost > 0 {
		c.log.Warn("concurrency leases taken again under a new instance; those no longer within their user's cap are closed",
			"retaken", retaken, "lost", lost)
	}
	return errors.Join(errs...)
}

// retakeBatch is retake for a few leases, in two pipelines.
func (c *Concurrency) retakeBatch(ctx context.Context, instance string, batch []heldLease) (retaken, lost int, err error) {
	fields := make([]any, 0, 2*len(batch))
	for _, h := range batch {
		fields = append(fields, instance+":"+h.id, h.user)
	}
	if err := c.rdb.HSet(ctx, c.indexKey(instance), fields...).Err(); err != nil {
		return 0, 0, fmt.Errorf("index: %w", err)
	}
	dead := c.deadInstances()
	var cmds []*redis.Cmd
	// The script is idempotent: pipelined may run it twice.
	err = pipelined(ctx, c.rdb, acquireScript, func(p redis.Pipeliner) {
		cmds = cmds[:0]
		for _, h := range batch {
			moved := h
			moved.instance = instance
			cmds = append(cmds, acquireScript.EvalSha(ctx, p, []string{c.Key(h.user)}, c.takeArgs(moved, h.member(), dead)...))
		}
	})
	var gone []Lease
	c.mu.Lock()
	for i, h := range batch {
		moved := h
		moved.instance = instance
		if cur, ok := c.held[h.id]; !ok || cur.instance != h.instance {
			// Released meanwhile, its old slot only: free the new one.
			c.pending[moved.member()] = pendingSlot{heldLease: moved}
			continue
		}
		v, cerr := takeReply(cmds[i])
		switch {
		case cerr != nil:
			// Tried again at the next beat.
		case v[0] == 1:
			c.held[h.id] = moved
			retaken++
		default:
			delete(c.held, h.id)
			c.pending[moved.member()] = pendingSlot{heldLease: moved} // its index entry
			gone = append(gone, Lease{user: h.user, id: h.id})
		}
	}
	c.mu.Unlock()
	if c.cfg.OnLost != nil {
		for _, l := range gone {
			c.cfg.OnLost(l)
		}
	}
	if err != nil {
		err = fmt.Errorf("take slots: %w", err)
	}
	return retaken, len(gone), err
}

// flushPending removes the slots and index entries of the pending set
// (concurrency.go) that have waited a beat at least, so that a command
// still on its way to Redis when its caller gave up has arrived before
// its slot is removed. Entries that fail stay for the next beat.
func (c *Concurrency) flushPending(ctx context.Context) error {
	c.mu.Lock()
	var due []heldLease
	for m, p := range c.pending {
		if !p.aged {
			p.aged = true
			c.pending[m] = p
			continue
		}
		due = append(due, p.heldLease)
	}
	c.mu.Unlock()
	var errs []error
	for len(due) > 0 {
		batch := due[:min(len(due), sweepBatch)]
		due = due[len(batch):]
		failed, _ := c.removeSlots(ctx, "", batch)
		var first error // of this batch: they likely share their cause
		c.mu.Lock()
		for i, h := range batch {
			if failed[i] == nil {
				delete(c.pending, h.member())
			} else if first == nil {
				first = failed[i]
			}
		}
		c.mu.Unlock()
		if first != nil {
			errs = append(errs, first)
		}
	}
	return errors.Join(errs...)
}

// done reports whether a removal needs no retry: it succeeded, or the key
// holds another type, so no slot. Any other refusal (READONLY, LOADING,
// CLUSTERDOWN, NOPERM…) may pass, and is retried.
func done(err error) bool {
	return err == nil || redis.HasErrorPrefix(err, "WRONGTYPE")
}

// beat runs the heartbeat script for instance.
func (c *Concurrency) beat(ctx context.Context, instance string, first bool) (alive bool, err error) {
	sent := c.now()
	n, err := heartbeatScript.Run(ctx, c.rdb, []string{c.registryKey()}, instance, c.cfg.LeaseTTL.Milliseconds(), flag(first)).Int()
	if err != nil {
		return false, fmt.Errorf("ratelimit: concurrency heartbeat: %w", err)
	}
	if n == 1 {
		c.beaten(instance, sent)
	}
	return n == 1, nil
}

// flag is the heartbeat script's first-beat argument.
func flag(first bool) string {
	if first {
		return "1"
	}
	return "0"
}

// beaten records that instance has a heartbeat, from a beat sent at sent:
// it lasts LeaseTTL from when Redis ran it, so at least LeaseTTL from sent.
func (c *Concurrency) beaten(instance string, sent time.Time) {
	c.mu.Lock()
	if c.instance == instance {
		c.registered = true
		if sent.After(c.beatSent) {
			c.beatSent = sent
		}
	}
	c.mu.Unlock()
}

// reincarnate names a new instance in place of a dead one. The leases
// held stay held: Renew takes them again under the new instance.
func (c *Concurrency) reincarnate(dead string) {
	c.mu.Lock()
	if c.instance != dead {
		c.mu.Unlock()
		return
	}
	n := len(c.held)
	c.instance, c.registered = newInstance(c.cfg.Replica), false
	c.mu.Unlock()
	c.log.Warn("concurrency heartbeat expired: this replica could not beat for the lease TTL and its slots may have been freed; it carries on as a new instance and takes its leases again",
		"leases", n, "ttl", c.cfg.LeaseTTL.String())
}

// deadInstances returns the instances Run last found dead.
func (c *Concurrency) deadInstances() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// readDead reads the instances whose heartbeat expired.
func (c *Concurrency) readDead(ctx context.Context) ([]string, error) {
	dead, err := deadScript.Run(ctx, c.rdb, []string{c.registryKey()}).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("ratelimit: concurrency: read dead replicas: %w", err)
	}
	c.mu.Lock()
	c.dead = dead
	c.mu.Unlock()
	return dead, nil
}

// sweep frees every slot a dead instance held, through its index, unless
// another replica is on it, then forgets the instance. A user's key that
// is not a sorted set (WRONGTYPE) holds no slot to free: it is reported
// and skipped, never allowed to stop the sweep of the other users.
func (c *Concurrency) sweep(ctx context.Context, instance string) error {
	ok, err := c.rdb.SetNX(ctx, c.sweepKey(instance), c.instanceName(), 2*c.cfg.LeaseTTL).Result()
	if err != nil || !ok {
		return err // another replica sweeps it
	}
	index := c.indexKey(instance)
	var skipped []error
	var cursor uint64
	for {
		kv, next, err := c.rdb.HScan(ctx, index, cursor, "*", sweepBatch).Result()
		if err != nil {
			return fmt.Errorf("scan leases: %w", err)
		}
		cmds := make([]*redis.IntCmd, 0, len(kv)/2)
		_, err = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := 0; i+1 < len(kv); i += 2 {
				cmds = append(cmds, p.ZRem(ctx, c.Key(kv[i+1]), kv[i]))
			}
			return nil
		})
		for _, cmd := range cmds {
			switch err := cmd.Err(); {
			case err == nil:
			case done(err): // a key of another type: no slot to free
				skipped = append(skipped, err)
			default:
				return fmt.Errorf("free leases: %w", err)
			}
		}
		if err != nil && len(skipped) == 0 {
			return fmt.Errorf("free leases: %w", err)
		}
		// Freed: forget them, so that a sweep cut short resumes where it was.
		var fields []string
		for i := 0; i < len(kv); i += 2 {
			fields = append(fields, kv[i])
		}
		if len(fields) > 0 {
			if err := c.rdb.HDel(ctx, index, fields...).Err(); err != nil {
				return fmt.Errorf("forget freed leases: %w", err)
			}
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	_, err = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, index)
		p.ZRem(ctx, c.registryKey(), instance)
		p.Del(ctx, c.sweepKey(instance))
		return nil
	})
	if err != nil {
		return fmt.Errorf("forget it: %w", err)
	}
	c.log.Info("freed the slots of a replica that stopped beating", "replica", instance)
	return errors.Join(skipped...)
}

// instanceName returns this process's current instance.
func (c *Concurrency) instanceName() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.instance
}
