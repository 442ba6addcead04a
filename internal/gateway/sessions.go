package gateway

import (
	"container/heap"
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/heraldgw/herald/internal/hub"
	"github.com/heraldgw/herald/internal/session"
)

// The session re-check costs Redis reads per live session, so it is paced
// and bounded per replica instead of walking every session at once:
//
//   - a session is due for a check once per SessionCheck, at its own
//     offset (sessions spread evenly over the interval, no burst), and at
//     its expiresAt as read at connect (an app may have extended it: the
//     check reads it as the app keeps it now), so expiry needs no polling
//     to be noticed promptly;
//   - each tick (a second, or SessionCheck when shorter) checks at most
//     SessionCheckRate × tick due sessions, the most overdue first, in one
//     pipeline. A replica holding more than SessionCheckRate × SessionCheck
//     sessions checks each less often than every SessionCheck, never
//     Redis harder.
//
// Revocations through the API reach every replica at once through the
// revocation watch; the check is what notices a session deleted directly
// in Redis.

// sessionCheckLoop closes sockets whose session expired, or was deleted
// from the backend, as the checks fall due. A backend error skips the
// tick's checks (they come round again a SessionCheck later): open sockets
// stay while Redis is away.
func (s *Server) sessionCheckLoop(ctx context.Context) {
	tick := min(time.Second, s.cfg.SessionCheck)
	t := time.NewTicker(tick)
	defer t.Stop()
	budget := max(1, int(s.cfg.SessionCheckRate*tick.Seconds()))
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.checkSessions(ctx, s.live.due(s.now(), budget, s.cfg.SessionCheck))
	}
}

// checkSessions asks the backend about sessions behind open sockets: a
// session deleted, unusable, or whose expiresAt (as the app keeps it now,
// extended or not) has passed closes its sockets with 4001.
func (s *Server) checkSessions(ctx context.Context, due []liveSession) {
	if len(due) == 0 {
		return
	}
	ids := make([]string, len(due))
	for i, l := range due {
		ids[i] = l.id
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	alive, err := s.sessions.Alive(cctx, ids)
	cancel()
	if err != nil {
		s.log.Warn("session check skipped: backend error", "err", err, "sessions", len(due))
		return
	}
	s.metrics.SessionChecks.Add(float64(len(due)))
	for i, ok := range alive {
		if !ok {
			l := due[i]
			s.hub.CloseUser(l.user, func(c *hub.Conn) bool { return c.Tag == l.hash }, hub.CloseRevoked, "session expired")
		}
	}
}

// liveSessions remembers the sessions behind open sockets, once per session
// however many sockets share it, and when each is next due for a check.
// Ids stay in memory only.
type liveSessions struct {
	mu    sync.Mutex
	m     map[string]*liveSession // by session hash; guarded by mu
	queue dueQueue                // the sessions of m by next check; guarded by mu
}

type liveSession struct {
	id, hash, user string
	refs           int
	expires        time.Time // expiresAt as last read
	next           time.Time // next check
	index          int       // in the queue
}

func newLiveSessions() *liveSessions { return &liveSessions{m: make(map[string]*liveSession)} }

// add counts one more socket of sess and returns the session's hash. A new
// session's first check falls at a random point of the next interval, or
// at its expiry when that comes first.
func (l *liveSessions) add(sess session.Session, now time.Time, every time.Duration) string {
	h := session.Hash(sess.ID)
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.m[h]
	if e == nil {
		e = &liveSession{id: sess.ID, hash: h, user: sess.UserID, expires: time.UnixMilli(sess.ExpiresAt)}
		e.next = now.Add(time.Duration(rand.Int64N(int64(every)) + 1))
		if e.expires.Before(e.next) {
			e.next = e.expires
		}
		l.m[h] = e
		heap.Push(&l.queue, e)
	}
	e.refs++
	return h
}

// release counts one socket of the session less; the last one forgets it.
func (l *liveSessions) release(hash string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.m[hash]; e != nil {
		if e.refs--; e.refs <= 0 {
			delete(l.m, hash)
			heap.Remove(&l.queue, e.index)
		}
	}
}

// due returns up to limit sessions whose check is due at now, the most
// overdue first, and schedules their next check one interval later, or at
// their expiresAt when that comes first (every check, not only the first:
// a session checked before it expires is checked again at its expiry).
func (l *liveSessions) due(now time.Time, limit int, every time.Duration) []liveSession {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []liveSession
	for len(out) < limit && len(l.queue) > 0 && !l.queue[0].next.After(now) {
		e := l.queue[0]
		out = append(out, *e)
		e.next = now.Add(every)
		if e.expires.After(now) && e.expires.Before(e.next) {
			e.next = e.expires
		}
		heap.Fix(&l.queue, 0)
	}
	return out
}

// dueQueue is a min-heap of sessions by next check (container/heap).
type dueQueue []*liveSession

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].next.Before(q[j].next) }
func (q dueQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *dueQueue) Push(x any) {
	e := x.(*liveSession)
	e.index = len(*q)
	*q = append(*q, e)
}
func (q *dueQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return e
}
