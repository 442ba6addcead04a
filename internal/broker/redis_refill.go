package broker

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
)

// A refill closes the gap pub/sub leaves when its connection drops: every
// event published while the replica was not subscribed. After go-redis
// resubscribed, each channel is marked refilling (live frames wait), its
// history after the last delivered id is read off the delivery loop, and
// the delivery loop then delivers those events and the waiting frames, in
// id order, dropping duplicates. A second reconnect during a refill bumps
// the channel's generation, so a stale read is discarded and a fresh one
// runs from the same last id.

// refillResult is one channel's history read, handed to the delivery loop.
type refillResult struct {
	name     string // pub/sub channel
	gen      uint64
	evs      []Event
	complete bool
}

// markRefill marks the Herald channels refilling and wakes the refiller.
// It runs on the delivery loop, before any frame of the new connection.
func (b *Redis) markRefill(channels []string) {
	b.mu.Lock()
	for _, ch := range channels {
		name := b.names.PubSub(ch)
		s := b.subs[name]
		if s == nil || s.refs == 0 || s.lastID == "" {
			continue // nothing delivered and no baseline: nothing to compare with
		}
		s.refilling = true
		s.gen++
		b.toRefill[name] = struct{}{}
	}
	b.mu.Unlock()
	b.wakeRefill()
}

// wakeRefill makes the refiller look at toRefill soon, without blocking.
func (b *Redis) wakeRefill() {
	select {
	case b.refill <- struct{}{}:
	default:
	}
}

type refillJob struct {
	name, channel, since string
	gen                  uint64
}

// refiller reads the history of channels marked for refill and hands the
// results to the delivery loop. A failed read is retried with back-off; the
// channel keeps buffering meanwhile.
func (b *Redis) refiller() {
	backoff := time.Duration(0)
	for {
		var retry <-chan time.Time
		if backoff > 0 {
			retry = time.After(backoff)
		}
		select {
		case <-b.ctx.Done():
			return
		case <-b.refill:
		case <-retry:
		}
		b.mu.Lock()
		var jobs []refillJob
		for name := range b.toRefill {
			// A sub waiting for its resubscription after a replacement is
			// refilled once that is confirmed, not before.
			if s := b.subs[name]; s != nil && s.refilling && !s.waitSub {
				jobs = append(jobs, refillJob{name: name, channel: s.channel, since: s.lastID, gen: s.gen})
			}
		}
		clear(b.toRefill)
		b.mu.Unlock()

		failed := false
		for _, j := range jobs {
			ctx, cancel := context.WithTimeout(b.ctx, roundTimeout)
			evs, complete, err := b.log.Range(ctx, j.channel, j.since)
			cancel()
			if err != nil {
				if b.ctx.Err() != nil {
					return
				}
				failed = true
				b.mu.Lock()
				b.toRefill[j.name] = struct{}{}
				b.mu.Unlock()
				continue
			}
			select {
			case b.filled <- refillResult{name: j.name, gen: j.gen, evs: evs, complete: complete}:
			case <-b.ctx.Done():
				return
			}
		}
		if failed {
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			b.logger.Warn("redis: history refill failed, will retry", "retry", backoff)
		} else {
			backoff = 0
		}
	}
}

// applyRefill delivers a channel's history read and the frames that waited
// for it, newest-first duplicates dropped, and ends the refill. It runs on
// the delivery loop.
func (b *Redis) applyRefill(r refillResult) {
	b.mu.Lock()
	s := b.subs[r.name]
	if s == nil || !s.refilling || s.waitSub || s.gen != r.gen || s.refs == 0 || b.closed {
		b.mu.Unlock()
		return // unsubscribed meanwhile, or a newer refill is on its way
	}
	var out []Event
	refilled := 0
	for _, ev := range r.evs {
		if newer(ev.ID, s.lastID) {
			s.lastID = ev.ID
			out = append(out, ev)
			refilled++
		}
	}
	for _, ev := range s.pending {
		if newer(ev.ID, s.lastID) {
			s.lastID = ev.ID
			out = append(out, ev)
		}
	}
	s.pending, s.refilling = nil, false
	ch := s.channel
	b.mu.Unlock()

	if !r.complete {
		b.stats.refillGaps.Add(1)
		b.logger.Warn("redis: events missed during a reconnect already left the history window", "kind", events.Prefix(ch))
	}
	b.stats.refilled.Add(uint64(refilled))
	for _, ev := range out {
		b.h(ch, ev.ID, ev.Frame)
	}
	b.stats.delivered.Add(uint64(len(out)))
}

// readBaselines records, for new channels about to be subscribed, the id of
// their newest retained event, so that a reconnect before their first
// delivery still knows where to refill from. It runs before the SUBSCRIBE.
func (b *Redis) readBaselines(ctx context.Context, names []string) error {
	type read struct {
		name string
		cmd  *redis.XMessageSliceCmd
	}
	var reads []read
	_, err := b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, name := range names {
			ch, ok := b.names.ChannelOf(name)
			if !ok {
				continue
			}
			reads = append(reads, read{name, p.XRevRangeN(ctx, b.names.History(ch), "+", "-", 1)})
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range reads {
		msgs, err := r.cmd.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		s := b.subs[r.name]
		if s == nil || s.lastID != "" {
			continue
		}
		s.lastID = "0-0"
		if len(msgs) > 0 {
			s.lastID = msgs[0].ID
		}
	}
	return nil
}
