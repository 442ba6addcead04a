package broker

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// Reconciler timing: how long one round's commands may take, and the
// bounds of the back-off after a failed round.
const (
	roundTimeout = 5 * time.Second
	minBackoff   = 50 * time.Millisecond
	maxBackoff   = 2 * time.Second
)

// Subscribe adds one reference to each channel and, when a channel is new,
// waits until Redis confirmed its subscription and its baseline was read.
// When ctx ends first it drops the references it added and returns ctx's
// error; when Close comes first it returns ErrClosed.
func (b *Redis) Subscribe(ctx context.Context, channels ...string) error {
	if err := validChannels(channels); err != nil {
		return err
	}
	if len(channels) == 0 {
		return nil
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	var waits []chan struct{}
	changed := false
	for _, ch := range channels {
		name := b.names.PubSub(ch)
		s := b.subs[name]
		if s == nil {
			// Frames wait until the baseline is read, once the SUBSCRIBE
			// is confirmed.
			s = &redisSub{channel: ch, refilling: true, waitSub: true, ready: make(chan struct{})}
			b.awaiting[name] = s
			b.subs[name] = s
		}
		s.refs++
		if s.refs == 1 {
			b.live++
		}
		if s.round == 0 {
			b.dirty[name] = struct{}{}
			changed = true
		}
		if s.lastID == "" {
			waits = append(waits, s.ready)
		}
	}
	b.mu.Unlock()
	if changed {
		b.wake()
	}

	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			b.Unsubscribe(channels...)
			// No channel names: an effect id is a capability, kept out of logs.
			return fmt.Errorf("subscribe %d channel(s): %w", len(channels), ctx.Err())
		case <-b.done:
			return ErrClosed
		}
	}
	return nil
}

// Unsubscribe drops one reference to each channel. A channel whose last
// reference goes is unsubscribed by the reconciler, in the background;
// frames of it that arrive meanwhile are ignored.
func (b *Redis) Unsubscribe(channels ...string) {
	changed := false
	b.mu.Lock()
	for _, ch := range channels {
		name := b.names.PubSub(ch)
		s := b.subs[name]
		if s == nil || s.refs == 0 {
			continue
		}
		s.refs--
		if s.refs > 0 {
			continue
		}
		b.live--
		if s.round == 0 {
			// Never sent (and not in flight: the reconciler numbers what it
			// sends), so there is nothing to undo in Redis.
			b.dropSubLocked(name, s)
			continue
		}
		b.dirty[name] = struct{}{}
		changed = true
	}
	b.mu.Unlock()
	if changed {
		b.wake()
	}
}

// wake makes the reconciler run a round soon, without blocking.
func (b *Redis) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// reconcile runs rounds when woken, retries failed ones with back-off, and
// resends barriers that stay unconfirmed for ResyncInterval.
func (b *Redis) reconcile() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false // timer is running
	backoff := time.Duration(0)
	failures := 0 // consecutive failed rounds
	for {
		timedOut := false
		select {
		case <-b.ctx.Done():
			timer.Stop()
			return
		case <-b.kick:
			if backoff > 0 {
				continue // the pending retry picks the changes up
			}
		case <-timer.C:
			armed, timedOut = false, true
		}

		err := b.round(timedOut)
		switch {
		case b.ctx.Err() != nil:
			return
		case err != nil:
			failures++
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			if failures&(failures-1) == 0 { // 1st, 2nd, 4th…: an outage does not flood the log
				b.logger.Warn("redis pub/sub: subscription change failed, will retry", "err", err, "failures", failures, "retry", backoff)
			}
			timer.Reset(backoff)
			armed = true
		default:
			if failures > 0 {
				b.logger.Info("redis pub/sub: subscription changes go through again", "failures", failures)
			}
			failures, backoff = 0, 0
			if !armed && b.awaitingConfirmation() {
				timer.Reset(b.opts.ResyncInterval)
				armed = true
			}
		}
	}
}

// round sends the changes recorded in dirty: one SUBSCRIBE for channels
// that gained their first reference, one UNSUBSCRIBE for those that lost
// their last, ended by the round's barrier. With resync it sends a barrier
// even when nothing changed but an earlier round is unconfirmed.
func (b *Redis) round(resync bool) error {
	b.mu.Lock()
	var adds, removes []string
	for name := range b.dirty {
		s := b.subs[name]
		switch {
		case s == nil:
		case s.refs > 0 && s.round == 0:
			adds = append(adds, name)
		case s.refs == 0 && s.round != 0:
			removes = append(removes, name)
			b.dropSubLocked(name, s)
		}
	}
	clear(b.dirty)
	if len(adds) == 0 && len(removes) == 0 && !(resync && b.awaitingConfirmationLocked()) {
		b.mu.Unlock()
		return nil
	}
	r := b.nextRound
	b.nextRound++
	for _, name := range adds {
		b.subs[name].round = r
	}
	b.mu.Unlock()

	ctx, cancel := context.WithTimeout(b.ctx, roundTimeout)
	defer cancel()
	b.mu.Lock()
	ps := b.ps
	b.mu.Unlock()
	if len(adds) > 0 {
		if err := ps.Subscribe(ctx, adds...); err != nil {
			// go-redis records channels as subscribed even when SUBSCRIBE
			// failed, and a reconnect it made during the call did not
			// include them. Roll its record back, so it never resubscribes
			// them behind our back, and resend them in a later round; this
			// round's barrier is not sent, so no baseline is read yet.
			_ = ps.Unsubscribe(ctx, append(removes, adds...)...)
			b.mu.Lock()
			for _, name := range adds {
				s := b.subs[name]
				s.round = 0
				if s.refs == 0 {
					b.dropSubLocked(name, s)
				} else {
					b.dirty[name] = struct{}{}
				}
			}
			b.mu.Unlock()
			return fmt.Errorf("subscribe %d channel(s): %w", len(adds), err)
		}
	}
	// go-redis forgets removed channels even when UNSUBSCRIBE fails, and its
	// connection is then replaced, so only the barrier can be lost here;
	// the resync timer sends a new one.
	if err := ps.Unsubscribe(ctx, append(removes, b.barrier(r))...); err != nil {
		return fmt.Errorf("unsubscribe %d channel(s): %w", len(removes), err)
	}
	return nil
}

// awaitingConfirmation reports whether a round was started whose barrier
// is not confirmed yet.
func (b *Redis) awaitingConfirmation() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.awaitingConfirmationLocked()
}

func (b *Redis) awaitingConfirmationLocked() bool { return b.nextRound-1 > b.doneRound }

// barrier is the channel name that marks the end of round r.
func (b *Redis) barrier(r uint64) string { return b.syncPrefix + strconv.FormatUint(r, 10) }

// barrierRound reverses barrier.
func (b *Redis) barrierRound(name string) (uint64, bool) {
	if len(name) <= len(b.syncPrefix) || name[:len(b.syncPrefix)] != b.syncPrefix {
		return 0, false
	}
	r, err := strconv.ParseUint(name[len(b.syncPrefix):], 10, 64)
	return r, err == nil
}

// confirmRound records that Redis answered round r's barrier, which proves
// every channel of that round and the earlier ones subscribed, and queues
// the baseline or refill reads that waited for that.
func (b *Redis) confirmRound(r uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if r <= b.doneRound {
		return
	}
	b.doneRound = r
	queued := false
	for name, s := range b.awaiting { // baselines of new subs, refills after a replacement
		if s.round != 0 && s.round <= r {
			s.waitSub = false
			delete(b.awaiting, name)
			b.toRefill[name] = struct{}{}
			queued = true
		}
	}
	if queued {
		b.wakeRefill()
	}
}

// dropSubLocked forgets a sub.
func (b *Redis) dropSubLocked(name string, _ *redisSub) {
	delete(b.awaiting, name)
	delete(b.subs, name)
}
