package broker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/heraldgw/herald/internal/events"
)

var _ Broker = (*Memory)(nil)

// Memory is the single-node Broker: events live in this process only. It
// assigns ids in the same "{ms}-{seq}" form as Redis streams, strictly
// increasing per channel even when the clock stalls or goes back, keeps a
// bounded history per channel and honours idempotency keys for the history
// TTL, like events.RedisLog.
//
// Publish calls the Handler synchronously, under the lock that assigned the
// ids, so delivery order per channel is id order even under concurrent
// publishers. It starts no goroutines. It is safe for concurrent use.
type Memory struct {
	h    Handler
	size int
	ttl  time.Duration
	now  func() time.Time

	// mu guards everything below, and serialises Handler calls.
	mu        sync.Mutex
	closed    bool
	chans     map[string]*memChannel
	idem      map[string]memIdem
	nextSweep time.Time
}

// memChannel is one channel's reference count and history.
type memChannel struct {
	refs    int
	lastMS  uint64 // id of the newest event ever assigned, for monotonic ids
	lastSeq uint64
	hist    []Event // oldest first; at most size entries
	lost    string  // id of the newest event dropped from hist, "" if none
}

// memIdem remembers the ids of a publish made with an idempotency key.
type memIdem struct {
	fingerprint string
	ids         []string
	expires     time.Time
}

// Event is one published event as kept in a channel's history: its id and
// the frame delivered to Handlers (do not modify it).
type Event = events.Entry

// NewMemory returns a Memory that delivers to h and keeps historySize events
// for historyTTL per channel; zero values take events.DefaultHistorySize and
// events.DefaultHistoryTTL.
func NewMemory(h Handler, historySize int, historyTTL time.Duration) *Memory {
	return newMemory(h, historySize, historyTTL, time.Now)
}

// newMemory is NewMemory with the clock injected, for tests.
func newMemory(h Handler, size int, ttl time.Duration, now func() time.Time) *Memory {
	if size <= 0 {
		size = events.DefaultHistorySize
	}
	if ttl <= 0 {
		ttl = events.DefaultHistoryTTL
	}
	return &Memory{
		h: h, size: size, ttl: ttl, now: now,
		chans: make(map[string]*memChannel),
		idem:  make(map[string]memIdem),
	}
}

// Publish validates pubs, assigns their ids, records them in their channels'
// histories and delivers their frames to the Handler for channels with
// local references, all under one lock, so a batch is atomic. A non-empty
// idemKey seen within the history TTL returns the first call's ids and
// delivers nothing.
func (m *Memory) Publish(ctx context.Context, idemKey string, pubs ...events.Publication) ([]string, error) {
	if len(pubs) == 0 {
		return nil, events.ErrNoPublications
	}
	for _, p := range pubs {
		if err := p.Validate(); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	now := m.now()
	m.maybeSweepLocked(now)
	if idemKey != "" {
		if prev, ok := m.idem[idemKey]; ok && now.Before(prev.expires) {
			if prev.fingerprint != events.Fingerprint(pubs) {
				return nil, events.ErrIdempotencyConflict
			}
			return append([]string(nil), prev.ids...), nil
		}
	}

	ms := uint64(max(now.UnixMilli(), 0))
	ids := make([]string, len(pubs))
	for i, p := range pubs {
		c := m.chans[p.Channel]
		if c == nil {
			c = &memChannel{}
			m.chans[p.Channel] = c
		}
		ids[i] = c.nextID(ms)
		ev := Event{ID: ids[i], Frame: events.AppendFrame(nil, ids[i], p)}
		c.appendLocked(ev, m.size, m.minMS(now))
		if c.refs > 0 && m.h != nil {
			m.h(p.Channel, ev.ID, ev.Frame)
		}
	}
	if idemKey != "" {
		m.idem[idemKey] = memIdem{ids: ids, fingerprint: events.Fingerprint(pubs), expires: now.Add(m.ttl)}
	}
	return append([]string(nil), ids...), nil
}

// nextID returns the next id of the channel at time ms, the way Redis's
// XADD * does: a stalled or backward clock keeps the last ms and bumps seq.
func (c *memChannel) nextID(ms uint64) string {
	if ms > c.lastMS {
		c.lastMS, c.lastSeq = ms, 0
	} else {
		c.lastSeq++
	}
	return events.FormatID(c.lastMS, c.lastSeq)
}

// appendLocked adds ev to the history and trims it to size entries no older
// than minMS.
func (c *memChannel) appendLocked(ev Event, size int, minMS uint64) {
	c.hist = append(c.hist, ev)
	c.trimLocked(size, minMS)
}

// trimLocked drops the events beyond size and those older than minMS,
// remembering the newest dropped id so History can tell a gap.
func (c *memChannel) trimLocked(size int, minMS uint64) {
	drop := max(len(c.hist)-size, 0)
	for drop < len(c.hist) {
		ms, _, _ := events.ParseID(c.hist[drop].ID)
		if ms >= minMS {
			break
		}
		drop++
	}
	if drop == 0 {
		return
	}
	c.lost = c.hist[drop-1].ID
	// Copy rather than reslice so the backing array does not grow forever.
	n := copy(c.hist, c.hist[drop:])
	clear(c.hist[n:])
	c.hist = c.hist[:n]
}

// minMS is the oldest event time still inside the history window at now.
func (m *Memory) minMS(now time.Time) uint64 {
	return uint64(max(now.Add(-m.ttl).UnixMilli(), 0))
}

// maybeSweepLocked forgets expired histories, idle channels and idempotency
// keys, at most twice per TTL, so memory stays bounded by what the window
// holds without a goroutine or a timer.
func (m *Memory) maybeSweepLocked(now time.Time) {
	if now.Before(m.nextSweep) {
		return
	}
	m.nextSweep = now.Add(m.ttl / 2)
	minMS := m.minMS(now)
	for name, c := range m.chans {
		c.trimLocked(m.size, minMS)
		if c.refs == 0 && len(c.hist) == 0 {
			delete(m.chans, name)
		}
	}
	for k, e := range m.idem {
		if !now.Before(e.expires) {
			delete(m.idem, k)
		}
	}
}

// History returns the events of channel after the event id since (all
// retained ones when since is ""), oldest first. complete is false when
// events after since have already left the history window, so the caller
// missed some and must refetch state. The frames are shared: do not modify
// them.
func (m *Memory) History(ctx context.Context, channel, since string) (evs []Event, complete bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, false, fmt.Errorf("history: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, false, ErrClosed
	}
	c := m.chans[channel]
	if c == nil {
		// Nothing retained: only a caller that asks for everything got it.
		return nil, since == "", nil
	}
	c.trimLocked(m.size, m.minMS(m.now()))
	complete = c.lost == "" || (since != "" && events.CompareIDs(since, c.lost) >= 0)
	for _, ev := range c.hist {
		if since == "" || events.CompareIDs(ev.ID, since) > 0 {
			evs = append(evs, ev)
		}
	}
	return evs, complete, nil
}

// Last returns the newest id assigned on channel, "0-0" for a channel that
// has none yet, "" when channel has no local reference.
func (m *Memory) Last(channel string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.chans[channel]
	if c == nil || c.refs == 0 {
		return ""
	}
	return events.FormatID(c.lastMS, c.lastSeq)
}

// Subscribe adds one reference to each channel. It returns at once: a frame
// published after it returns is delivered.
func (m *Memory) Subscribe(ctx context.Context, channels ...string) error {
	if err := validChannels(channels); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	for _, ch := range channels {
		c := m.chans[ch]
		if c == nil {
			c = &memChannel{}
			m.chans[ch] = c
		}
		c.refs++
	}
	return nil
}

// Unsubscribe drops one reference to each channel. Frames of a channel
// whose last reference it dropped are not delivered after it returns.
func (m *Memory) Unsubscribe(channels ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ch := range channels {
		c := m.chans[ch]
		if c == nil || c.refs == 0 {
			continue
		}
		c.refs--
		if c.refs == 0 && len(c.hist) == 0 {
			delete(m.chans, ch)
		}
	}
}

// Ping returns nil until Close, then ErrClosed.
func (m *Memory) Ping(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	return ctx.Err()
}

// Close stops delivery and drops all state. It returns nil, also when called
// again.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	clear(m.chans)
	clear(m.idem)
	return nil
}

// validChannels reports the first channel name that is not a client channel
// (PROTOCOL §2) as a *events.FieldError.
func validChannels(channels []string) error {
	for _, ch := range channels {
		if _, _, err := events.ParseChannel(ch); err != nil {
			return fmt.Errorf("subscribe %q: %w", ch, &events.FieldError{Field: "channel", Reason: err.Error()})
		}
	}
	return nil
}
