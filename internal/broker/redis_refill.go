package broker

import (
	"context"
	"time"

	"github.com/heraldgw/herald/internal/events"
)

// A read closes what pub/sub alone leaves open, in two cases:
//
//   - a baseline: a new subscription's frames wait until its SUBSCRIBE is
//     confirmed and the channel's newest id (or a "{ms}-0" baseline) is
//     read after that; frames at or below it are dropped, the rest
//     delivered. Every event after the baseline thus reaches the Handler.
//   - a refill: after a reconnect (or a replaced connection), once the
//     resubscription is confirmed, the history after the last delivered id
//     is read and delivered before the frames that waited, without
//     duplicates. A refill that finds events gone (or keeps failing) tells
//     OnGap.
//
// Reads run off the delivery loop, on the refiller goroutine; their
// results are applied on the delivery loop. A second reconnect during a
// read bumps the sub's generation, so a stale result is discarded and a
// fresh read runs.

// maxRefillFailures is how many reads of one refill may fail in a row
// before it gives up: the frames that waited are delivered and the gap is
// reported.
const maxRefillFailures = 5

// refillResult is one channel's read, handed to the delivery loop.
type refillResult struct {
	name     string // pub/sub channel
	gen      uint64
	baseline string        // a baseline read; "" for a refill
	replay   events.Replay // a refill's history read
	giveUp   bool          // a refill that failed maxRefillFailures times
}

// markRefill marks the Herald channels of a resubscription burst
// refilling and wakes the refiller. It runs on the delivery loop, before
// any frame of the new connection. A channel whose baseline was not read
// yet reads it now: one read in flight may predate the reconnect.
func (b *Redis) markRefill(channels []string) {
	b.mu.Lock()
	for _, ch := range channels {
		name := b.names.PubSub(ch)
		s := b.subs[name]
		if s == nil || s.refs == 0 || s.waitSub {
			continue // its read follows the confirmation of its subscription
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
	name, channel, since string // since "": a baseline read
	gen                  uint64
	failures             int
}

// refiller runs the reads of channels in toRefill and hands the results to
// the delivery loop. A failed read is retried with back-off; the channel
// keeps holding its frames meanwhile.
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
		var baselines, refills []refillJob
		b.mu.Lock()
		for name := range b.toRefill {
			s := b.subs[name]
			if s == nil || !s.refilling || s.waitSub {
				continue // gone, or reads once its subscription is confirmed
			}
			j := refillJob{name: name, channel: s.channel, since: s.lastID, gen: s.gen, failures: s.failures}
			if j.since == "" {
				baselines = append(baselines, j)
			} else {
				refills = append(refills, j)
			}
		}
		clear(b.toRefill)
		b.mu.Unlock()

		failed := !b.readBaselines(baselines)
		for _, j := range refills {
			ctx, cancel := context.WithTimeout(b.ctx, roundTimeout)
			r, err := b.log.Range(ctx, j.channel, j.since)
			cancel()
			res := refillResult{name: j.name, gen: j.gen, replay: r}
			if err != nil {
				if b.ctx.Err() != nil {
					return
				}
				b.stats.refillFailures.Add(1)
				if j.failures+1 < maxRefillFailures {
					failed = true
					b.retry(j)
					continue
				}
				res.giveUp = true
			}
			if !b.hand(res) {
				return
			}
		}
		if failed {
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			b.logger.Warn("redis: baseline or history read failed, will retry", "retry", backoff.String())
		} else {
			backoff = 0
		}
	}
}

// readBaselines reads the baselines of jobs in one round trip and hands
// them over. It reports false when the read failed (the jobs are queued
// again).
func (b *Redis) readBaselines(jobs []refillJob) bool {
	if len(jobs) == 0 {
		return true
	}
	channels := make([]string, len(jobs))
	for i, j := range jobs {
		channels[i] = j.channel
	}
	ctx, cancel := context.WithTimeout(b.ctx, roundTimeout)
	ids, err := b.log.Baselines(ctx, channels)
	cancel()
	if err != nil {
		if b.ctx.Err() == nil {
			b.stats.refillFailures.Add(1)
			for _, j := range jobs {
				b.retry(j)
			}
		}
		return false
	}
	for i, j := range jobs {
		if !b.hand(refillResult{name: j.name, gen: j.gen, baseline: ids[i]}) {
			return true
		}
	}
	return true
}

// retry queues a failed read again, counting the failure.
func (b *Redis) retry(j refillJob) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.subs[j.name]; s != nil && s.gen == j.gen {
		s.failures++
		b.toRefill[j.name] = struct{}{}
	}
}

// hand gives a result to the delivery loop; false when the broker closed.
func (b *Redis) hand(r refillResult) bool {
	select {
	case b.filled <- r:
		return true
	case <-b.ctx.Done():
		return false
	}
}

// applyRefill applies a read on the delivery loop: it sets a baseline, or
// reports a gap and delivers a refill's events, then the frames that
// waited, newest-first duplicates dropped, and ends the hold.
func (b *Redis) applyRefill(r refillResult) {
	b.mu.Lock()
	s := b.subs[r.name]
	if s == nil || !s.refilling || s.waitSub || s.gen != r.gen || s.refs == 0 || b.closed {
		b.mu.Unlock()
		return // unsubscribed meanwhile, or a newer read is on its way
	}
	var out []pendingFrame
	refilled := 0
	if r.baseline != "" {
		s.lastID = r.baseline
	}
	for _, ev := range r.replay.Events {
		if newer(ev.ID, s.lastID) {
			s.lastID = ev.ID
			out = append(out, pendingFrame{id: ev.ID, owner: r.replay.Owner, frame: ev.Frame})
			refilled++
		}
	}
	for _, f := range s.pending {
		if newer(f.id, s.lastID) {
			s.lastID = f.id
			out = append(out, f)
		}
	}
	s.pending, s.refilling, s.failures = nil, false, 0
	if s.ready != nil {
		close(s.ready)
		s.ready = nil
	}
	ch := s.channel
	b.mu.Unlock()

	if gap := r.baseline == "" && (r.giveUp || !r.replay.Complete); gap {
		b.stats.refillGaps.Add(1)
		b.logger.Warn("redis: events missed during a reconnect cannot be recovered from history",
			"kind", events.Prefix(ch), "gave_up", r.giveUp)
		if b.opts.OnGap != nil {
			b.opts.OnGap(ch)
		}
	}
	b.stats.refilled.Add(uint64(refilled))
	for _, f := range out {
		b.h(ch, f.id, f.owner, f.frame)
	}
	b.stats.delivered.Add(uint64(len(out)))
}
