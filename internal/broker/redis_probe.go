package broker

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
)

// probeCheck is one connection's probe of a round.
type probeCheck struct {
	c        *psConn
	seq      uint64
	received uint64 // c.received when the probe was sent
	cmd      *redis.IntCmd
}

// behind reports whether p's connection is alive but its messages wait
// for a busy delivery loop: a receiver took the probe, and the loop took
// messages of that connection since it was sent. Such a connection is
// not replaced (its probe comes later, in order): replacing it would lose
// what it holds and cost a refill, under exactly the load that made the
// loop late. One that stopped receiving delivers nothing more.
func (b *Redis) behind(p probeCheck) bool {
	return b.mayReceive(p) && p.c.received.Load() > p.received
}

// probe publishes, every ProbeInterval, a numbered message on the probe
// channel of every connection whose subscription is confirmed (PUBLISH,
// or SPUBLISH to a partition's slot, in one pipeline), and waits up to
// ProbeTimeout for the delivery loop to see them. A connection whose probe
// Redis accepted but that did not receive it (or that Redis says nobody
// receives: a shard connection left on a node that lost the slot, or a
// pub/sub connection left on an old primary after a failover) has stopped
// receiving without breaking: it is rebuilt, and refills from history.
//
// Each tick also publishes what waits in the outboxes and the replicas
// have (flushPending), and with WatchPrimary looks for a new primary
// (watchPrimary).
func (b *Redis) probe() {
	t := time.NewTicker(b.opts.ProbeInterval)
	defer t.Stop()
	primary := "" // run_id of the primary, once known
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
		if b.opts.WatchPrimary {
			b.watchPrimary(&primary)
		}
		b.flushPending()
		checks := b.sendProbes()
		b.awaitProbes(checks)
		b.mu.Lock()
		for _, p := range checks {
			if p.cmd.Err() != nil || p.c.probeGot >= p.seq || !b.probeSubscribedLocked(p.c) || p.c.rebuild || b.closed {
				// Seen, or Redis unreachable (not a pub/sub problem, and
				// go-redis reconnects), or a change began meanwhile.
				continue
			}
			if b.behind(p) {
				b.stats.probesLate.Add(1)
				continue
			}
			b.logger.Warn("redis pub/sub stopped receiving; replacing the connection and refilling from history",
				"receivers", p.cmd.Val(), "partition", p.c.part)
			p.c.rebuildLocked()
		}
		b.mu.Unlock()
	}
}

// sendProbes publishes the probes of this round in one pipeline.
func (b *Redis) sendProbes() []probeCheck {
	var checks []probeCheck
	b.mu.Lock()
	for _, c := range b.connsLocked() {
		if b.probeSubscribedLocked(c) && !c.rebuild {
			c.probeSent++
			checks = append(checks, probeCheck{c: c, seq: c.probeSent, received: c.received.Load()})
		}
	}
	b.mu.Unlock()
	if len(checks) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(b.ctx, b.opts.ProbeTimeout)
	defer cancel()
	b.stats.probes.Add(uint64(len(checks)))
	_, _ = b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range checks {
			c := checks[i].c
			if c.sharded {
				checks[i].cmd = p.SPublish(ctx, c.probe, checks[i].seq)
			} else {
				checks[i].cmd = p.Publish(ctx, c.probe, checks[i].seq)
			}
		}
		return nil
	})
	return checks
}

// awaitProbes waits until every probe that reached a receiver was seen, or
// ProbeTimeout passed.
func (b *Redis) awaitProbes(checks []probeCheck) {
	deadline := time.NewTimer(b.opts.ProbeTimeout)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		waiting := false
		for _, p := range checks {
			if p.cmd.Err() == nil && b.mayReceive(p) && p.c.probeGot < p.seq {
				waiting = true
				break
			}
		}
		b.mu.Unlock()
		if !waiting {
			return
		}
		select {
		case <-b.probed:
		case <-deadline.C:
			return
		case <-b.ctx.Done():
			return
		}
	}
}

// mayReceive reports whether probe p can still arrive: Redis counted a
// receiver, or cannot tell. A cluster counts, for a plain PUBLISH, only
// the receivers on the node that took it, and passes the message to the
// others over its bus: a plain connection on a cluster waits for its
// probe whatever the count.
func (b *Redis) mayReceive(p probeCheck) bool {
	return p.cmd.Val() > 0 || (b.sharded && !p.c.sharded)
}

// probeSubscribedLocked reports whether c's probe channel is confirmed
// subscribed on its current PubSub.
func (b *Redis) probeSubscribedLocked(c *psConn) bool {
	s := b.subs[c.probe]
	return s != nil && c.ps != nil && s.round != 0 && s.round <= c.doneRound
}

// watchPrimary asks the server the client's commands reach for its run_id
// and, when it is not the one seen last (*known), rebuilds every
// connection at once: each drops the frames of its old PubSub from now on
// (its epoch moves), and its reconciler opens a new one and refills every
// channel from history after the last event delivered. A failed query
// changes nothing: the next tick asks again, and the probe still catches
// a connection that stopped receiving.
func (b *Redis) watchPrimary(known *string) {
	ctx, cancel := context.WithTimeout(b.ctx, b.opts.ProbeTimeout)
	defer cancel()
	info, err := b.rdb.Info(ctx, "server").Result()
	if err != nil {
		return
	}
	id := infoField(info, "run_id")
	if id == "" || id == *known {
		return
	}
	was := *known
	*known = id
	if was == "" {
		return // the first answer: the connections were opened on it
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	for _, c := range b.connsLocked() {
		c.epoch++ // frames of the old PubSub are dropped from now on; the refill covers them
		c.rebuildLocked()
	}
	b.mu.Unlock()
	b.stats.primaryChanges.Add(1)
	b.logger.Warn("redis primary changed (Sentinel failover); moving every pub/sub connection and refilling from history")
	if b.opts.OnPrimaryChange != nil {
		b.opts.OnPrimaryChange()
	}
}

// infoField returns the value of "name:value" in an INFO reply.
func infoField(info, name string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// flushPending publishes outbox entries that a failed flush, or a
// publisher that stopped between WAIT and its flush, left behind
// (events.RedisLog.FlushPending): without it they would wait for the next
// publish in their partition. Missing replica confirmations are expected
// while a primary has too few replicas and are not logged.
func (b *Redis) flushPending() {
	ctx, cancel := context.WithTimeout(b.ctx, b.opts.ProbeTimeout)
	defer cancel()
	n, err := b.log.FlushPending(ctx)
	if n > 0 {
		b.stats.outboxFlushed.Add(uint64(n))
		b.logger.Info("published events left in the outbox", "events", n)
	}
	if err != nil && !errors.Is(err, events.ErrNotReplicated) && b.ctx.Err() == nil {
		b.logger.Debug("periodic outbox flush failed", "err", err)
	}
}
