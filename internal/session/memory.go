package session

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Memory is the single-node Store: sessions, tickets and watchers live in
// this process, with the same semantics as Redis. Its expiry decisions
// (sessions and tickets alike) use the injected clock. It is safe for
// concurrent use.
type Memory struct {
	now func() time.Time

	// mu guards the fields below. Lock order: mu, then a watcher's mu.
	mu        sync.Mutex
	sessions  map[string]Session // by id, expired ones until the next sweep
	tickets   map[string]memTicket
	watchers  map[*watcher]struct{}
	nextSweep time.Time
}

var _ Store = (*Memory)(nil)

type memTicket struct {
	sessionID string
	expires   time.Time // stale at and after
}

// sweepEvery is how often (by the injected clock) Create and IssueTicket
// drop expired sessions and stale tickets, so that memory does not grow
// with sessions nobody looks up again.
const sweepEvery = time.Minute

// NewMemory returns an empty Memory whose expiry decisions use now, time.Now
// when nil.
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{
		now:      now,
		sessions: make(map[string]Session),
		tickets:  make(map[string]memTicket),
		watchers: make(map[*watcher]struct{}),
	}
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, id string) (Session, error) {
	m.mu.Lock()
	s, ok := m.sessions[id]
	m.mu.Unlock()
	if !ok {
		return Session{}, ErrNotFound
	}
	if s.Expired(m.now()) {
		return Session{}, ErrExpired
	}
	return s, nil
}

// Create implements Store.
func (m *Memory) Create(ctx context.Context, userID, email, plan string, ttl time.Duration) (Session, error) {
	now := m.now()
	s, err := newSession(now, userID, email, plan, ttl)
	if err != nil {
		return Session{}, fmt.Errorf("create session: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked(now)
	m.sessions[s.ID] = s
	return s, nil
}

// Revoke implements Store. Every current Watch gets the Revocation queued
// before Revoke returns; Revoke never waits for a watcher. An expired
// session is revoked like a live one until a sweep has dropped it; then
// Revoke reports ErrNotFound, as Redis does once the key's TTL has passed.
func (m *Memory) Revoke(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sessions[id]
	if !ok {
		return ErrNotFound
	}
	delete(m.sessions, id)
	rev := Revocation{UserID: s.UserID, SessionHash: Hash(id)}
	for w := range m.watchers {
		w.push(rev)
	}
	return nil
}

// Alive implements Store.
func (m *Memory) Alive(ctx context.Context, ids []string) ([]bool, error) {
	alive := make([]bool, len(ids))
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, id := range ids {
		s, ok := m.sessions[id]
		alive[i] = ok && !s.Expired(now)
	}
	return alive, nil
}

// IssueTicket implements Store.
func (m *Memory) IssueTicket(ctx context.Context, s Session) (string, error) {
	if s.ID == "" {
		return "", errors.New("issue ticket: session has no id")
	}
	now := m.now()
	t := newToken()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked(now)
	m.tickets[t] = memTicket{sessionID: s.ID, expires: now.Add(TicketTTL)}
	return t, nil
}

// RedeemTicket implements Store.
func (m *Memory) RedeemTicket(ctx context.Context, ticket string) (Session, error) {
	m.mu.Lock()
	t, ok := m.tickets[ticket]
	delete(m.tickets, ticket)
	m.mu.Unlock()
	if !ok || !m.now().Before(t.expires) {
		return Session{}, ErrNotFound
	}
	return m.Get(ctx, t.sessionID)
}

// Watch implements Store. Its subscription is in place as soon as Watch has
// registered itself, right after it is called. Revocations wait for fn in an
// unbounded per-Watch queue, so a slow fn delays but never loses them and
// never blocks Revoke.
func (m *Memory) Watch(ctx context.Context, ready func(), fn func(Revocation)) error {
	w := &watcher{wake: make(chan struct{}, 1)}
	m.mu.Lock()
	m.watchers[w] = struct{}{}
	m.mu.Unlock()
	if ready != nil {
		ready()
	}
	defer func() {
		m.mu.Lock()
		delete(m.watchers, w)
		m.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.wake:
			for _, rev := range w.take() {
				if ctx.Err() != nil {
					return nil
				}
				fn(rev)
			}
		}
	}
}

// sweepLocked drops expired sessions and stale tickets, at most once per
// sweepEvery. m.mu must be held.
func (m *Memory) sweepLocked(now time.Time) {
	if now.Before(m.nextSweep) {
		return
	}
	m.nextSweep = now.Add(sweepEvery)
	for id, s := range m.sessions {
		if s.Expired(now) {
			delete(m.sessions, id)
		}
	}
	for t, tk := range m.tickets {
		if !now.Before(tk.expires) {
			delete(m.tickets, t)
		}
	}
}

// watcher is the queue between Revoke and one Watch.
type watcher struct {
	wake chan struct{} // capacity 1: "the queue is not empty"

	mu    sync.Mutex // guards queue
	queue []Revocation
}

// push queues rev and wakes the Watch without blocking.
func (w *watcher) push(rev Revocation) {
	w.mu.Lock()
	w.queue = append(w.queue, rev)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// take empties the queue and returns what it held.
func (w *watcher) take() []Revocation {
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.queue
	w.queue = nil
	return q
}
