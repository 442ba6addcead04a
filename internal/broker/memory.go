package broker

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald/internal/events"
)

var _ Broker = (*Memory)(nil)

// MemoryConfig tunes a Memory broker. Zero fields take the defaults of
// events.LogConfig.
type MemoryConfig struct {
	HistorySize int
	HistoryTTL  time.Duration
	RecordTTL   time.Duration // how long a channel's newest id is remembered after its last publish
}

// Memory is the single-node Broker: events live in this process only. It
// keeps what events.RedisLog keeps, with the same rules: ids "{ms}-{seq}"
// strictly increasing per channel even when the clock stalls or goes back
// (a new record starts at seq 1), a bounded history per channel, a record
// of its newest id that outlives the history, effect owners, and
// idempotency keys for the history TTL.
//
// Publish hands frames to the Handler in id order per channel: ids are
// assigned under mu and delivery happens under deliverMu, taken before mu
// is released. The Handler runs without mu, so it may call Unsubscribe,
// Last and History. Memory starts no goroutines and is safe for
// concurrent use.
type Memory struct {
	h   Handler
	cfg MemoryConfig
	now func() time.Time

	deliverMu sync.Mutex  // serialises Handler calls, in id order; taken before mu is released
	shut      atomic.Bool // closed, for Ping, which must not wait for mu

	// mu guards everything below.
	mu        sync.Mutex
	closed    bool
	chans     map[string]*memChannel
	idem      map[string]memIdem
	owners    map[string]memOwner // effect id → the app's owner record
	nextSweep time.Time
}

// memChannel is one channel's reference count, record and history.
type memChannel struct {
	refs    int
	hasTop  bool   // an event was assigned an id within the record TTL
	lastMS  uint64 // newest id assigned
	lastSeq uint64
	lost    string  // newest id gone from hist
	owner   string  // recorded owner of an effect
	touched int64   // ms of the last publish: the record lives RecordTTL after it
	hist    []Event // oldest first; at most HistorySize entries
}

type memIdem struct {
	fingerprint string
	ids         []string
	expires     time.Time
}

type memOwner struct {
	user    string
	expires time.Time
}

// NewMemory returns a Memory that delivers to h.
func NewMemory(h Handler, cfg MemoryConfig) *Memory { return newMemory(h, cfg, time.Now) }

// newMemory is NewMemory with the clock injected, for tests.
func newMemory(h Handler, cfg MemoryConfig, now func() time.Time) *Memory {
	if cfg.HistorySize <= 0 {
		cfg.HistorySize = events.DefaultHistorySize
	}
	if cfg.HistoryTTL <= 0 {
		cfg.HistoryTTL = events.DefaultHistoryTTL
	}
	if cfg.RecordTTL <= 0 {
		cfg.RecordTTL = events.DefaultRecordTTL
	}
	cfg.RecordTTL = max(cfg.RecordTTL, cfg.HistoryTTL)
	return &Memory{
		h: h, cfg: cfg, now: now,
		chans:  make(map[string]*memChannel),
		idem:   make(map[string]memIdem),
		owners: make(map[string]memOwner),
	}
}

// delivery is one frame to hand to the Handler after the ids are assigned.
type delivery struct{ channel, id, owner string }

// Publish validates pubs, assigns their ids, records them in their channels'
// histories and records, and delivers their frames to the Handler for
// channels with local references; a batch is atomic. A non-empty idemKey
// seen within the history TTL returns the first call's ids and delivers
// nothing.
func (m *Memory) Publish(ctx context.Context, idemKey string, pubs ...events.Publication) ([]string, error) {
	if len(pubs) == 0 {
		return nil, events.ErrNoPublications
	}
	pubs = slices.Clone(pubs)
	for i, p := range pubs {
		if err := p.Validate(); err != nil {
			return nil, err
		}
		pubs[i] = p.Normalized()
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	now := m.now()
	m.maybeSweepLocked(now)
	if idemKey != "" {
		if prev, ok := m.idem[idemKey]; ok && now.Before(prev.expires) {
			m.mu.Unlock()
			if prev.fingerprint != events.Fingerprint(pubs) {
				return nil, events.ErrIdempotencyConflict
			}
			return append([]string(nil), prev.ids...), nil
		}
	}

	ms := uint64(max(now.UnixMilli(), 0))
	ids := make([]string, len(pubs))
	var out []delivery
	var frames [][]byte
	for i, p := range pubs {
		c := m.channelLocked(p.Channel, now)
		if c.owner == "" {
			c.owner = m.ownerLocked(p, now)
		}
		ids[i] = c.nextID(ms, m.cfg.RecordTTL)
		ev := Event{ID: ids[i], Frame: events.AppendFrame(nil, ids[i], p)}
		c.touched = now.UnixMilli()
		c.hist = append(c.hist, ev)
		c.trimLocked(m.cfg.HistorySize, m.minMS(now))
		if c.refs > 0 && m.h != nil {
			out = append(out, delivery{p.Channel, ev.ID, c.owner})
			frames = append(frames, ev.Frame)
		}
	}
	if idemKey != "" {
		m.idem[idemKey] = memIdem{ids: ids, fingerprint: events.Fingerprint(pubs), expires: now.Add(m.cfg.HistoryTTL)}
	}
	m.deliverMu.Lock()
	m.mu.Unlock()
	for i, d := range out {
		m.h(d.channel, d.id, d.owner, frames[i])
	}
	m.deliverMu.Unlock()
	return append([]string(nil), ids...), nil
}

// channelLocked returns channel's state, forgetting a record that expired.
func (m *Memory) channelLocked(channel string, now time.Time) *memChannel {
	c := m.chans[channel]
	if c == nil {
		c = &memChannel{}
		m.chans[channel] = c
	}
	if c.hasTop && now.UnixMilli()-c.touched >= m.cfg.RecordTTL.Milliseconds() {
		*c = memChannel{refs: c.refs}
	}
	return c
}

// ownerLocked decides the owner of an effect publication: the app's owner
// record, else the user its data names.
func (m *Memory) ownerLocked(p events.Publication, now time.Time) string {
	kind, id, _ := events.ParseChannel(p.Channel)
	if kind != events.KindEffect {
		return ""
	}
	if o, ok := m.owners[id]; ok && now.Before(o.expires) {
		return o.user
	}
	return p.ImpliedOwner()
}

// nextID returns the next id of the channel at time ms, the way the
// publish script does: a stalled or backward clock keeps the last ms and
// bumps seq; a new record starts at seq 1 and marks everything older than
// the record TTL as gone.
func (c *memChannel) nextID(ms uint64, recordTTL time.Duration) string {
	switch {
	case !c.hasTop:
		c.hasTop, c.lastMS, c.lastSeq = true, ms, 1
		c.lost = events.FormatID(uint64(max(int64(ms)-recordTTL.Milliseconds(), 0)), 0)
	case ms > c.lastMS:
		c.lastMS, c.lastSeq = ms, 0
	default:
		c.lastSeq++
	}
	return events.FormatID(c.lastMS, c.lastSeq)
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
	return uint64(max(now.Add(-m.cfg.HistoryTTL).UnixMilli(), 0))
}

// maybeSweepLocked forgets expired histories, records, owners and
// idempotency keys, at most twice per history TTL, so memory stays bounded
// by what the windows hold without a goroutine or a timer.
func (m *Memory) maybeSweepLocked(now time.Time) {
	if now.Before(m.nextSweep) {
		return
	}
	m.nextSweep = now.Add(m.cfg.HistoryTTL / 2)
	minMS := m.minMS(now)
	for name, c := range m.chans {
		c.trimLocked(m.cfg.HistorySize, minMS)
		if c.refs == 0 && now.UnixMilli()-c.touched >= m.cfg.RecordTTL.Milliseconds() {
			delete(m.chans, name)
		}
	}
	for k, e := range m.idem {
		if !now.Before(e.expires) {
			delete(m.idem, k)
		}
	}
	for k, o := range m.owners {
		if !now.Before(o.expires) {
			delete(m.owners, k)
		}
	}
}

// History returns the events of channel after the event id since, oldest
// first, with the rules of events.RedisLog.Range. The frames are shared: do
// not modify them.
func (m *Memory) History(ctx context.Context, channel, since string) (events.Replay, error) {
	if err := ctx.Err(); err != nil {
		return events.Replay{}, fmt.Errorf("history: %w", err)
	}
	if since == "" {
		since = "0-0"
	}
	sinceMS, _, err := events.ParseID(since)
	if err != nil {
		return events.Replay{}, &events.FieldError{Field: "since", Reason: "not an event id"}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return events.Replay{}, ErrClosed
	}
	now := m.now()
	c := m.channelLocked(channel, now)
	c.trimLocked(m.cfg.HistorySize, m.minMS(now))
	var r events.Replay
	r.Owner = c.owner
	for _, ev := range c.hist {
		if events.CompareIDs(ev.ID, since) > 0 {
			r.Events = append(r.Events, ev)
		}
	}
	switch top := events.FormatID(c.lastMS, c.lastSeq); {
	case !c.hasTop:
		r.Complete = int64(sinceMS) >= now.UnixMilli()-m.cfg.RecordTTL.Milliseconds()
	case events.CompareIDs(since, top) >= 0:
		r.Complete = true
	default:
		r.Complete = len(c.hist) > 0 && (c.lost == "" || events.CompareIDs(since, c.lost) >= 0)
	}
	return r, nil
}

// Last returns the newest id assigned on channel or, when it has none, a
// baseline "{now}-0"; "" when channel has no local reference.
func (m *Memory) Last(channel string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.chans[channel]
	if c == nil || c.refs == 0 {
		return ""
	}
	now := m.now()
	if c = m.channelLocked(channel, now); !c.hasTop {
		return events.FormatID(uint64(max(now.UnixMilli(), 0)), 0)
	}
	return events.FormatID(c.lastMS, c.lastSeq)
}

// Owner returns the app's owner record of an effect, else the owner an
// event of it named.
func (m *Memory) Owner(ctx context.Context, effectID string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("owner: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if o, ok := m.owners[effectID]; ok && now.Before(o.expires) {
		return o.user, nil
	}
	if c := m.chans[events.EffectChannel(effectID)]; c != nil {
		return m.channelLocked(events.EffectChannel(effectID), now).owner, nil
	}
	return "", nil
}

// SetOwner records the owner of an effect for ttl.
func (m *Memory) SetOwner(ctx context.Context, effectID, userID string, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("set owner: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.owners[effectID] = memOwner{user: userID, expires: m.now().Add(ttl)}
	return nil
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
		if c.refs == 0 && !c.hasTop {
			delete(m.chans, ch)
		}
	}
}

// Ping returns nil until Close, then ErrClosed.
//
// It takes no lock: a publish holds mu while it waits for the fan-out
// before it, so under a heavy fan-out a ping queued behind publishes for
// seconds, and the gateway's readiness probe took the busy twin for an
// unreachable backend and refused every publish.
func (m *Memory) Ping(ctx context.Context) error {
	if m.shut.Load() {
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
	m.shut.Store(true)
	clear(m.chans)
	clear(m.idem)
	clear(m.owners)
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
