package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
)

// A psConn is one pub/sub connection and the rounds that keep its
// subscriptions in step with the local references: on a single Redis the
// only one; on a cluster one per partition with local channels, plus the
// unsharded one of the classic ingress. Its reconciler goroutine owns its
// go-redis PubSub: it opens it with the first round's channels (so that
// go-redis dials the node of their slot, never a random one), sends every
// round, and replaces it when asked to (rebuild).
//
// A cluster moves a partition's slot in two ways, and both end in a
// rebuild followed by a refill from history of every channel the
// connection carried:
//
//   - resharding: when the slot leaves a node, the node unsubscribes its
//     shard channels with a server-sent "sunsubscribe", which go-redis
//     passes on but does not act on. The delivery loop sees it for a
//     channel whose subscription was confirmed and asks for a rebuild.
//   - failover: the connection breaks and go-redis reconnects, to the node
//     its cluster state names for the slot, and resubscribes (a refill, as
//     after any reconnect). While its state is stale it may reach a node
//     that no longer owns the slot, which answers MOVED to the SSUBSCRIBE
//     and the barrier; go-redis drops those errors. The barrier then stays
//     unconfirmed: after two resyncs the reconciler reloads the cluster
//     state and rebuilds. The probe, sent with SPUBLISH to the slot's real
//     owner, finds such a connection too (no receiver) and asks for one.
type psConn struct {
	part       int    // the partition of its channels; -1: unsharded
	sharded    bool   // SSUBSCRIBE, SUNSUBSCRIBE, SPUBLISH
	syncPrefix string // barrier channel names: syncPrefix + round
	probe      string // its probe channel
	kick       chan struct{}

	// Guarded by Redis.mu.
	ps          *redis.PubSub // nil until the first round, and after a rebuild
	epoch       uint64        // bumped by each rebuild; messages of an older PubSub are dropped
	rebuild     bool          // replace ps before the next round
	moved       bool          // the rebuild follows a slot move: wait for the new owner
	node        string        // on a cluster: the node ps was opened on
	dirty       map[string]struct{}
	awaiting    map[string]*redisSub // subs with waitSub set, by pub/sub name
	nextRound   uint64               // number the next round gets
	doneRound   uint64               // highest round whose barrier Redis confirmed
	unconfirmed int                  // resyncs sent since a barrier was last confirmed
	probeSent   uint64               // newest probe published
	probeGot    uint64               // newest probe received

	// received counts the messages of this connection the delivery loop
	// took, to tell a loop that is behind from a connection that stopped.
	received atomic.Uint64
}

// connMsg is a message of one connection's PubSub, tagged with the epoch
// it was read in.
type connMsg struct {
	c     *psConn
	epoch uint64
	msg   any
}

// stuckResyncs is how many resyncs a sharded connection sends without a
// confirmation before it is rebuilt: its node no longer owns the slot.
const stuckResyncs = 2

// newConnLocked creates the connection of partition part (-1: unsharded),
// with its probe channel, and starts its reconciler.
func (b *Redis) newConnLocked(part int) *psConn {
	c := &psConn{
		part:      part,
		sharded:   part >= 0,
		kick:      make(chan struct{}, 1),
		dirty:     make(map[string]struct{}),
		awaiting:  make(map[string]*redisSub),
		nextRound: 1,
	}
	id := rand.Text()
	if c.sharded {
		// The partition's hash tag puts barriers and probes in its slot.
		base := b.names.Prefix + "herald:" + events.Tag(part) + ":"
		c.syncPrefix, c.probe = base+"sync:"+id+":", base+"probe:"+id
	} else {
		c.syncPrefix, c.probe = b.names.Prefix+"herald:sync:", b.names.Prefix+"herald:probe:"+id
	}
	if part >= 0 {
		b.parts[part] = c
	}
	b.addSubLocked(c.probe, &redisSub{conn: c, refs: 1})
	b.wg.Go(func() { b.reconcile(c) })
	return c
}

// connForLocked returns the connection that carries channel, creating it
// when its partition has none yet.
func (b *Redis) connForLocked(channel string) *psConn {
	if !b.sharded {
		return b.plain
	}
	p := events.Partition(channel)
	if c := b.parts[p]; c != nil {
		return c
	}
	return b.newConnLocked(p)
}

// connsLocked returns every connection.
func (b *Redis) connsLocked() []*psConn {
	out := make([]*psConn, 0, len(b.parts)+1)
	if b.plain != nil {
		out = append(out, b.plain)
	}
	for _, c := range b.parts {
		out = append(out, c)
	}
	return out
}

// addSubLocked registers a sub (its refs already counted) to be
// subscribed by its connection's next round.
func (b *Redis) addSubLocked(name string, s *redisSub) {
	b.subs[name] = s
	s.conn.dirty[name] = struct{}{}
	s.conn.wake()
}

// wake makes the connection's reconciler run a round soon, without
// blocking.
func (c *psConn) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// reconcile runs c's rounds when woken, retries failed ones with back-off,
// and resends barriers that stay unconfirmed for ResyncInterval.
//
// A round starts at once when the connection's last one started at least
// roundGap ago, else at that point, with every change made meanwhile: a
// quiet gateway's subscription goes out at once, and under a connect storm
// a round carries the channels of a few connects instead of one (each
// round is two writes to Redis, its SUBSCRIBE and its barrier, about 8 %
// of the gateway's CPU in a storm when rounds came one per connect).
func (b *Redis) reconcile(c *psConn) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false // timer is running
	gap := time.NewTimer(time.Hour)
	gap.Stop()
	gathering := false // gap is running
	var last time.Time // when the last round started
	backoff := time.Duration(0)
	failures := 0 // consecutive failed rounds
	for {
		timedOut := false
		select {
		case <-b.ctx.Done():
			timer.Stop()
			gap.Stop()
			return
		case <-c.kick:
			if backoff > 0 || gathering {
				continue // the pending retry or round picks the changes up
			}
			if wait := roundGap - time.Since(last); wait > 0 {
				gap.Reset(wait)
				gathering = true
				continue
			}
		case <-gap.C:
			gathering = false
			if backoff > 0 {
				continue
			}
		case <-timer.C:
			armed, timedOut = false, true
		}

		last = time.Now()
		err := b.round(c, timedOut)
		switch {
		case b.ctx.Err() != nil:
			return
		case err != nil:
			failures++
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			if failures&(failures-1) == 0 { // 1st, 2nd, 4th…: an outage does not flood the log
				b.logger.Warn("redis pub/sub: subscription change failed, will retry", "err", err, "failures", failures, "retry", backoff, "partition", c.part)
			}
			timer.Reset(backoff)
			armed = true
		default:
			if failures > 0 {
				b.logger.Info("redis pub/sub: subscription changes go through again", "failures", failures, "partition", c.part)
			}
			failures, backoff = 0, 0
			if !armed && b.awaitingConfirmation(c) {
				timer.Reset(b.opts.ResyncInterval)
				armed = true
			}
		}
	}
}

// round sends the changes recorded in c.dirty: one SUBSCRIBE for channels
// that gained their first reference, one UNSUBSCRIBE for those that lost
// their last, ended by the round's barrier. With resync it sends a barrier
// even when nothing changed but an earlier round is unconfirmed. A
// connection asked to rebuild, or one stuck without confirmations, is
// replaced first; a new PubSub is opened with the round's SUBSCRIBE.
func (b *Redis) round(c *psConn, resync bool) error {
	b.mu.Lock()
	if resync && c.sharded && c.awaitingLocked() && c.unconfirmed >= stuckResyncs {
		c.rebuild = true
		b.logger.Warn("redis pub/sub: a shard's node confirms nothing; reloading the cluster's slots and reconnecting", "partition", c.part)
	}
	if c.rebuild {
		b.mu.Unlock()
		b.reset(c)
		b.mu.Lock()
	}
	var adds, removes []string
	for name := range c.dirty {
		s := b.subs[name]
		switch {
		case s == nil || s.conn != c:
		case s.refs > 0 && s.round == 0:
			adds = append(adds, name)
		case s.refs == 0 && s.round != 0:
			removes = append(removes, name)
			b.dropSubLocked(name, s)
		}
	}
	clear(c.dirty)
	ps, epoch := c.ps, c.epoch
	if ps == nil && len(adds) == 0 {
		// Nothing subscribed on no connection: nothing to undo or confirm.
		b.mu.Unlock()
		return nil
	}
	resend := resync && c.awaitingLocked()
	if len(adds) == 0 && len(removes) == 0 && !resend {
		b.mu.Unlock()
		return nil
	}
	if resend {
		c.unconfirmed++
	}
	r := c.nextRound
	c.nextRound++
	for _, name := range adds {
		b.subs[name].round = r
	}
	b.mu.Unlock()

	ctx, cancel := context.WithTimeout(b.ctx, roundTimeout)
	defer cancel()
	opened := ps == nil
	if opened {
		ps = b.newPubSub(c)
	}
	if len(adds) > 0 {
		if err := c.subscribe(ctx, ps, adds); err != nil {
			// go-redis records channels as subscribed even when SUBSCRIBE
			// failed, and a reconnect it made during the call did not
			// include them. Roll its record back, so it never resubscribes
			// them behind our back, and resend them in a later round; this
			// round's barrier is not sent, so no baseline is read yet.
			if opened {
				ps.Close()
			} else {
				_ = c.unsubscribe(ctx, ps, append(removes, adds...))
			}
			b.mu.Lock()
			for _, name := range adds {
				s := b.subs[name]
				s.round = 0
				if s.refs == 0 {
					b.dropSubLocked(name, s)
				} else {
					c.dirty[name] = struct{}{}
				}
			}
			b.mu.Unlock()
			return fmt.Errorf("subscribe %d channel(s): %w", len(adds), err)
		}
	}
	if opened {
		b.mu.Lock()
		if b.closed || c.epoch != epoch {
			b.mu.Unlock()
			ps.Close()
			return nil
		}
		c.ps = ps
		c.node = b.owner(c)
		b.mu.Unlock()
		b.forward(c, ps, epoch)
	}
	// go-redis forgets removed channels even when UNSUBSCRIBE fails, and its
	// connection is then replaced, so only the barrier can be lost here;
	// the resync timer sends a new one.
	if err := c.unsubscribe(ctx, ps, append(removes, c.barrier(r))); err != nil {
		return fmt.Errorf("unsubscribe %d channel(s): %w", len(removes), err)
	}
	return nil
}

// newPubSub returns an unconnected PubSub of c's kind: go-redis dials when
// it is first subscribed.
func (b *Redis) newPubSub(c *psConn) *redis.PubSub {
	if c.sharded {
		return b.rdb.SSubscribe(b.ctx)
	}
	return b.rdb.Subscribe(b.ctx)
}

func (c *psConn) subscribe(ctx context.Context, ps *redis.PubSub, names []string) error {
	if c.sharded {
		return ps.SSubscribe(ctx, names...)
	}
	return ps.Subscribe(ctx, names...)
}

func (c *psConn) unsubscribe(ctx context.Context, ps *redis.PubSub, names []string) error {
	if c.sharded {
		return ps.SUnsubscribe(ctx, names...)
	}
	return ps.Unsubscribe(ctx, names...)
}

// forward starts the goroutine that reads ps's messages and hands them to
// the delivery loop, tagged with epoch, until ps is closed; once the
// broker is closing it drops what it reads.
//
// It reads the connection itself (PubSub.Receive) rather than through
// go-redis's Go channel: that one puts a goroutine hop, a channel send and
// a timer reset and stop between the socket and this loop for every
// message (4 % of the gateway's CPU at 25k personal events/s), and its
// health check pings are redundant with the broker's probe, which finds a
// connection that stopped receiving and rebuilds it. A read that fails
// has go-redis reconnect and subscribe everything again at the next read,
// as its own loop does; the confirmations that follow start the refill.
func (b *Redis) forward(c *psConn, ps *redis.PubSub, epoch uint64) {
	b.wg.Go(func() {
		failures := 0
		for {
			m, err := ps.Receive(b.ctx)
			switch {
			case errors.Is(err, redis.ErrClosed):
				return
			case err != nil:
				// As go-redis's own loop: the first failure is tried again
				// at once (go-redis reconnects), later ones after a pause.
				if failures++; failures > 1 {
					select {
					case <-time.After(receiveRetry):
					case <-b.ctx.Done():
						return
					}
				}
				continue
			}
			failures = 0
			switch m.(type) {
			case *redis.Message, *redis.Subscription:
				select {
				case b.in <- connMsg{c: c, epoch: epoch, msg: m}:
				case <-b.ctx.Done():
				}
			}
		}
	})
}

// receiveRetry is the pause between failed reads of a pub/sub connection
// after the first.
const receiveRetry = 100 * time.Millisecond

// reset drops c's PubSub so that the next round opens a new one: every
// channel is subscribed again on it, live frames wait meanwhile, and once
// a channel's resubscription is confirmed its history after the last
// delivered id is refilled, as after a reconnect. Messages still coming
// from the old PubSub are dropped (their epoch is gone). On a cluster the
// client reloads its slot map first, so that the new PubSub goes to the
// slot's current owner. It runs on c's reconciler only.
func (b *Redis) reset(c *psConn) {
	b.mu.Lock()
	was, moved := c.node, c.moved
	b.mu.Unlock()
	if cc, ok := b.rdb.(*redis.ClusterClient); ok {
		cc.ReloadState(b.ctx)
		if moved {
			b.awaitOwner(c, was)
		}
	}
	b.mu.Lock()
	old := c.ps
	c.ps = nil
	c.epoch++
	c.rebuild, c.moved = false, false
	c.unconfirmed = 0
	for name, s := range b.subs {
		if s.conn != c {
			continue
		}
		if s.refs == 0 {
			b.dropSubLocked(name, s) // was only waiting for its UNSUBSCRIBE
			continue
		}
		s.round = 0
		c.dirty[name] = struct{}{}
		if s.channel != "" {
			// Hold frames, and read the baseline or refill once the
			// subscription on the new connection is confirmed.
			s.refilling = true
			s.gen++
			s.waitSub = true
			c.awaiting[name] = s
		}
	}
	b.mu.Unlock()
	if old != nil {
		old.Close()
		b.stats.replacements.Add(1)
	}
}

// owner returns the node that the client's slot map says serves c's
// partition; "" when not on a cluster or not known.
func (b *Redis) owner(c *psConn) string {
	cc, ok := b.rdb.(*redis.ClusterClient)
	if !ok || !c.sharded {
		return ""
	}
	n, err := cc.MasterForKey(b.ctx, c.probe)
	if err != nil {
		return ""
	}
	return n.Options().Addr
}

// moveSettle bounds how long a rebuild after a slot move waits for the
// client's slot map to name the slot's new owner.
const moveSettle = time.Second

// awaitOwner waits until the client's slot map (reloading in the
// background) no longer names was as the owner of c's partition, for up
// to moveSettle, so that the new PubSub goes to the new owner at once. A
// map that stays stale costs a later rebuild (stuckResyncs), not events.
func (b *Redis) awaitOwner(c *psConn, was string) {
	deadline := time.Now().Add(moveSettle)
	for b.owner(c) == was && was != "" && time.Now().Before(deadline) && b.ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond) // the reload runs in go-redis's own goroutine
	}
}

// rebuildLocked asks c's reconciler to replace its PubSub.
func (c *psConn) rebuildLocked() {
	c.rebuild = true
	c.wake()
}

// awaitingConfirmation reports whether a round of c was started whose
// barrier is not confirmed yet.
func (b *Redis) awaitingConfirmation(c *psConn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return c.awaitingLocked()
}

func (c *psConn) awaitingLocked() bool { return c.nextRound-1 > c.doneRound }

// barrier is the channel name that marks the end of round r.
func (c *psConn) barrier(r uint64) string { return c.syncPrefix + strconv.FormatUint(r, 10) }

// barrierRound reverses barrier.
func (c *psConn) barrierRound(name string) (uint64, bool) {
	if len(name) <= len(c.syncPrefix) || name[:len(c.syncPrefix)] != c.syncPrefix {
		return 0, false
	}
	r, err := strconv.ParseUint(name[len(c.syncPrefix):], 10, 64)
	return r, err == nil
}

// confirmRoundLocked records that Redis answered c's round r barrier,
// which proves every channel of that round and the earlier ones
// subscribed, and queues the baseline or refill reads that waited for
// that.
func (b *Redis) confirmRoundLocked(c *psConn, r uint64) {
	if r <= c.doneRound {
		return
	}
	c.doneRound = r
	c.unconfirmed = 0
	queued := false
	for name, s := range c.awaiting { // baselines of new subs, refills after a replacement
		if s.round != 0 && s.round <= r {
			s.waitSub = false
			delete(c.awaiting, name)
			b.toRefill[name] = struct{}{}
			queued = true
		}
	}
	if queued {
		b.wakeRefill()
	}
}

// dropSubLocked forgets a sub.
func (b *Redis) dropSubLocked(name string, s *redisSub) {
	delete(s.conn.awaiting, name)
	delete(b.subs, name)
}
