package broker

import (
	"context"
	"fmt"
	"time"
)

// Reconciler timing: how long one round's commands may take, the least
// time between the starts of two rounds of a connection (roundGap), and
// the bounds of the back-off after a failed round.
const (
	roundTimeout = 5 * time.Second
	roundGap     = time.Millisecond
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
	for _, ch := range channels {
		name := b.names.PubSub(ch)
		s := b.subs[name]
		if s == nil {
			// Frames wait until the baseline is read, once the SUBSCRIBE
			// is confirmed.
			s = &redisSub{channel: ch, conn: b.connForLocked(ch), refilling: true, waitSub: true, ready: make(chan struct{})}
			s.conn.awaiting[name] = s
			b.subs[name] = s
		}
		s.refs++
		if s.refs == 1 {
			b.live++
		}
		if s.round == 0 {
			s.conn.dirty[name] = struct{}{}
			s.conn.wake()
		}
		if s.lastID == "" {
			waits = append(waits, s.ready)
		}
	}
	b.mu.Unlock()

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
// reference goes is unsubscribed by its connection's reconciler, in the
// background; frames of it that arrive meanwhile are ignored.
func (b *Redis) Unsubscribe(channels ...string) {
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
		s.conn.dirty[name] = struct{}{}
		s.conn.wake()
	}
	b.mu.Unlock()
}
