package broker

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
)

// classicTimeout bounds one classic conversion's publish.
const classicTimeout = 5 * time.Second

// receive is the delivery loop: it handles every connection's messages
// (handed over by their forwarders) and the results of history reads,
// until Close. It never blocks: it calls the Handler (non-blocking by
// contract), queues classic messages without waiting and takes b.mu only
// briefly. Resubscriptions after a reconnect are gathered while they keep
// arriving and reported before the next frame is delivered.
func (b *Redis) receive() {
	var resubscribed bool // gathering a resubscription burst
	var channels []string // Herald channels in the burst
	flush := func() {
		if resubscribed {
			b.resubscribed(channels)
		}
		resubscribed, channels = false, nil
	}
	for {
		var cm connMsg
		if resubscribed {
			select {
			case cm = <-b.in:
			default:
				flush() // the burst is over, at least for now
				continue
			}
		} else {
			select {
			case cm = <-b.in:
			case r := <-b.filled:
				b.applyRefill(r)
				continue
			case <-b.ctx.Done():
				return
			}
		}
		switch m := cm.msg.(type) {
		case *redis.Message:
			flush()
			b.deliver(cm.c, cm.epoch, m)
		case *redis.Subscription:
			ch, resub := b.onSubscription(cm.c, cm.epoch, m)
			if resub {
				resubscribed = true
				if ch != "" {
					channels = append(channels, ch)
				}
			}
		}
	}
}

// deliver hands a message to the Handler if its channel has local
// references, or queues it for conversion if it is a classic one. Messages
// of a replaced PubSub (an older epoch) are dropped: the refill that
// follows a replacement covers them.
func (b *Redis) deliver(c *psConn, epoch uint64, m *redis.Message) {
	b.stats.received.Add(1)
	c.received.Add(1)
	if m.Channel == c.probe {
		if seq, err := strconv.ParseUint(m.Payload, 10, 64); err == nil {
			b.mu.Lock()
			if c.epoch == epoch {
				c.probeGot = max(c.probeGot, seq)
			}
			b.mu.Unlock()
			select {
			case b.probed <- struct{}{}:
			default:
			}
		}
		return
	}
	if m.Channel == events.ClassicChannel && b.classic != nil && !c.sharded {
		select {
		case b.classic <- []byte(m.Payload):
		default:
			// Logged at the 1st, 2nd, 4th, 8th… drop, so a flood cannot flood the log.
			if n := b.stats.dropped.Add(1); n&(n-1) == 0 {
				b.logger.Warn("classic effect:complete messages dropped: conversion queue full", "dropped", n, "queue", cap(b.classic))
			}
		}
		return
	}
	owner, frame := splitOwner(m.Payload)
	id, ok := events.FrameID(frame)
	b.mu.Lock()
	s := b.subs[m.Channel]
	if s == nil || s.refs == 0 || s.channel == "" || s.conn != c || c.epoch != epoch || b.closed || !ok {
		b.mu.Unlock()
		b.stats.ignored.Add(1)
		return
	}
	if s.refilling {
		s.pending = append(s.pending, pendingFrame{id: id, owner: owner, frame: frame})
		if len(s.pending) > maxPending {
			// Too much waits: drop it all and read history again from the
			// last delivered id, which covers every dropped frame. (A sub
			// waiting for its (re)subscription reads then anyway, and a
			// baseline read after these frames covers them too.)
			b.stats.pendingDropped.Add(uint64(len(s.pending)))
			s.pending = nil
			if !s.waitSub && s.lastID != "" {
				s.gen++
				b.toRefill[m.Channel] = struct{}{}
				b.mu.Unlock()
				b.wakeRefill()
				return
			}
		}
		b.mu.Unlock()
		return
	}
	if !newer(id, s.lastID) {
		b.mu.Unlock()
		b.stats.duplicates.Add(1)
		return
	}
	s.lastID = id
	ch := s.channel
	b.mu.Unlock()
	b.h(ch, id, owner, frame)
	b.stats.delivered.Add(1)
}

// splitOwner splits a pub/sub payload into the owner of an effect's event
// and the frame: the publish script sends "{owner}\n{frame}" for owned
// effects, the bare frame otherwise.
func splitOwner(payload string) (owner string, frame []byte) {
	if len(payload) > 0 && payload[0] != '{' {
		if o, f, ok := strings.Cut(payload, "\n"); ok {
			return o, []byte(f)
		}
	}
	return "", []byte(payload)
}

// newer reports whether id comes after last ("" is before everything).
func newer(id, last string) bool { return last == "" || events.CompareIDs(id, last) > 0 }

// onSubscription handles a (un)subscription message of connection c. A
// barrier confirms its round. A "subscribe" (or "ssubscribe") for a
// channel whose subscription was already confirmed was not asked for by
// this broker: go-redis reconnected and resubscribed it. Then resub is
// true and ch is the Herald channel, "" for the classic ingress and
// probes. A "sunsubscribe" for such a channel was not asked for either:
// the cluster moved the partition's slot to another node, and c is
// rebuilt there.
func (b *Redis) onSubscription(c *psConn, epoch uint64, m *redis.Subscription) (ch string, resub bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c.epoch != epoch {
		return "", false // a replaced PubSub
	}
	if r, ok := c.barrierRound(m.Channel); ok {
		b.confirmRoundLocked(c, r)
		return "", false
	}
	s := b.subs[m.Channel]
	if s == nil || s.conn != c || s.refs == 0 || s.round == 0 || s.round > c.doneRound {
		// Ours, late, or for a channel nobody waits on any more.
		return "", false
	}
	switch m.Kind {
	case "subscribe", "ssubscribe":
		return s.channel, true
	case "sunsubscribe":
		if !c.rebuild {
			c.moved = true
			b.stats.moves.Add(1)
			b.logger.Info("redis cluster moved a partition's slot; resubscribing on its new node and refilling from history", "partition", c.part)
			c.rebuildLocked()
		}
	}
	return "", false
}

// resubscribed reports a resubscription burst and starts refilling its
// channels: frames received from now on wait until what pub/sub missed
// while disconnected has been read from history and delivered.
func (b *Redis) resubscribed(channels []string) {
	b.stats.resubscribes.Add(1)
	b.logger.Info("redis pub/sub reconnected and resubscribed; refilling from history", "channels", len(channels))
	b.markRefill(channels)
	if b.opts.OnResubscribe != nil && len(channels) > 0 {
		b.opts.OnResubscribe(channels)
	}
}

// convertClassic is the classic worker: it turns queued classic payloads
// into events, one at a time, off the delivery loop because each needs a
// Redis round trip.
func (b *Redis) convertClassic() {
	for {
		select {
		case <-b.ctx.Done():
			return
		case payload := <-b.classic:
			b.convert(payload)
		}
	}
}

// convert publishes the events a classic payload stands for. The
// idempotency key is the payload's hash (events.ClassicKey), so that of all
// the replicas hearing the same message exactly one creates the events
// (the publish script checks and sets the key atomically); the others get
// the same ids.
func (b *Redis) convert(payload []byte) {
	pubs, err := events.ParseClassic(payload)
	if err != nil {
		b.stats.invalid.Add(1)
		// The payload is not logged: it is an app's data.
		b.logger.Warn("classic effect:complete message ignored", "err", err, "bytes", len(payload))
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, classicTimeout)
	defer cancel()
	if _, err := b.log.Append(ctx, events.ClassicKey(payload), pubs...); err != nil {
		b.stats.publishFailed.Add(1)
		if b.ctx.Err() == nil {
			b.logger.Warn("classic effect:complete message not published", "err", err)
		}
		return
	}
	b.stats.converted.Add(1)
}
