package broker

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// probe publishes a numbered message on the broker's probe channel every
// ProbeInterval and waits ProbeTimeout for the delivery loop to see it.
// When Redis accepted the probe but this broker did not receive it (or
// Redis says nobody is subscribed), the pub/sub connection has stopped
// receiving without breaking: replace it.
func (b *Redis) probe() {
	t := time.NewTicker(b.opts.ProbeInterval)
	defer t.Stop()
	var seq uint64
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
		if !b.probeSubscribed() {
			continue // (re)subscribing: go-redis or a round is on it
		}
		seq++
		n, err := b.rdb.Publish(b.ctx, b.probeName, seq).Result()
		if err != nil {
			continue // Redis unreachable: not a pub/sub problem, and go-redis reconnects
		}
		if n > 0 && b.sawProbe(seq) {
			continue
		}
		if !b.probeSubscribed() || b.ctx.Err() != nil {
			continue // a reconnect began meanwhile, or the broker is closing
		}
		b.logger.Warn("redis pub/sub stopped receiving; replacing the connection and refilling from history", "receivers", n)
		b.replace()
	}
}

// probeSubscribed reports whether the probe channel's subscription is
// confirmed on the current connection.
func (b *Redis) probeSubscribed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.subs[b.probeName]
	return s != nil && s.round != 0 && s.round <= b.doneRound
}

// sawProbe waits until the delivery loop has seen probe seq.
func (b *Redis) sawProbe(seq uint64) bool {
	deadline := time.NewTimer(b.opts.ProbeTimeout)
	defer deadline.Stop()
	for {
		select {
		case got := <-b.probeSeen:
			if got >= seq {
				return true
			}
		case <-deadline.C:
			return false
		case <-b.ctx.Done():
			return true
		}
	}
}

// replace swaps in a new pub/sub connection: every channel is subscribed
// again on it by the reconciler, live frames wait meanwhile, and once a
// channel's resubscription is confirmed its history after the last
// delivered id is refilled, as after a reconnect.
//
// Close may run at the same time: whichever of the two sees the other
// closes both connections (Close closes b.ps; replace closes the old one,
// and the new one too when Close came first).
func (b *Redis) replace() {
	ps := b.rdb.Subscribe(b.ctx)
	msgs := ps.ChannelWithSubscriptions(redis.WithChannelSize(b.opts.ReceiveBuffer))
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		ps.Close()
		return
	}
	old := b.ps
	b.ps = ps
	for name, s := range b.subs {
		if s.refs == 0 {
			b.dropSubLocked(name, s) // was only waiting for its UNSUBSCRIBE
			continue
		}
		s.round = 0
		b.dirty[name] = struct{}{}
		if s.channel != "" {
			// Hold frames, and read the baseline or refill once the
			// subscription on the new connection is confirmed.
			s.refilling = true
			s.gen++
			s.waitSub = true
			b.awaiting[name] = s
		}
	}
	b.mu.Unlock()
	b.stats.replacements.Add(1)
	b.wake()
	select {
	case b.swapped <- msgs: // the delivery loop now reads the new connection
	case <-b.ctx.Done(): // Close closes the new one (b.ps)
	}
	old.Close()
}
