package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// renewScript pushes the expiry of this replica's leases of one user to
// now + ttl, on Redis's clock. A lease that is gone (released elsewhere, or
// expired while this replica could not reach Redis) is not brought back:
// its slot may already be someone else's. Such leases are returned, so the
// replica stops renewing them; an expired one still present is removed.
//
// KEYS[1] the user's sorted set; ARGV[1] lease ttl, ms; ARGV[2..] members.
// Returns the members that were lost.
var renewScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) > now then
    redis.call('ZADD', KEYS[1], exp, ARGV[i])
  else
    if s then redis.call('ZREM', KEYS[1], ARGV[i]) end
    lost[#lost + 1] = ARGV[i]
  end
end
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] then redis.call('PEXPIREAT', KEYS[1], tonumber(top[2]) + 1) end
return lost
`)

// renewBatch is how many users' renewals share one pipeline.
const renewBatch = 500

// Run renews this limiter's leases every LeaseTTL/3 until ctx is done. It
// must run while leases are held, or other replicas see them expire after
// LeaseTTL. Failures are logged and retried at the next tick; two ticks may
// fail before a lease expires.
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
			c.log.Warn("concurrency leases not renewed", "err", err)
		}
	}
}

// Renew pushes the expiry of every lease this limiter holds to LeaseTTL
// from now, in one pipeline per renewBatch users. Leases found lost (they
// expired while Redis was out of reach for longer than LeaseTTL) are
// dropped and logged: their connections stay open but no longer count.
func (c *Concurrency) Renew(ctx context.Context) error {
	c.mu.Lock()
	byUser := make(map[string][]any, len(c.held))
	for member, user := range c.held {
		byUser[user] = append(byUser[user], member)
	}
	c.mu.Unlock()
	if len(byUser) == 0 {
		return nil
	}
	// EVALSHA in a pipeline does not fall back to EVAL: load first (cheap,
	// and it covers a Redis that restarted since the last renewal).
	if err := renewScript.Load(ctx, c.rdb).Err(); err != nil {
		return fmt.Errorf("ratelimit: load renew script: %w", err)
	}
	ttl := c.cfg.LeaseTTL.Milliseconds()
	var lost []string
	var errs []error
	pipe := c.rdb.Pipeline()
	cmds := make([]*redis.Cmd, 0, min(len(byUser), renewBatch))
	// Every batch is sent even when one fails: a single bad key (one
	// user's set overwritten with another type) must not leave the leases
	// of every user in later batches unrenewed.
	flush := func() {
		_, err := pipe.Exec(ctx)
		for _, cmd := range cmds {
			gone, cerr := cmd.StringSlice()
			if cerr == nil {
				lost = append(lost, gone...)
			}
		}
		cmds = cmds[:0]
		if err != nil {
			errs = append(errs, err)
		}
	}
	for user, members := range byUser {
		args := append([]any{ttl}, members...)
		cmds = append(cmds, renewScript.EvalSha(ctx, pipe, []string{c.Key(user)}, args...))
		if len(cmds) == renewBatch {
			flush()
		}
	}
	flush()
	c.forget(lost)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ratelimit: renew leases: %w", err)
	}
	return nil
}

// forget stops renewing lost leases and logs how many there were. A lease
// released while its renewal was in flight is not held any more and does
// not count as lost.
func (c *Concurrency) forget(lost []string) {
	if len(lost) == 0 {
		return
	}
	n := 0
	c.mu.Lock()
	for _, m := range lost {
		if _, ok := c.held[m]; ok {
			delete(c.held, m)
			n++
		}
	}
	c.mu.Unlock()
	if n > 0 {
		c.log.Warn("concurrency leases lost: expired while Redis was out of reach", "count", n)
	}
}
