package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/heraldgw/herald/internal/hub"
	"github.com/heraldgw/herald/ratelimit"
)

// CloseSlotLost is the code and reason of a connection whose slot the
// limiter lost (SlotLost): the user is at the cap without it. A client
// reconnects later, with backoff, and is refused with 429 while the user
// stays at the cap.
const (
	CloseSlotLost       = hub.CloseTryAgain
	closeSlotLostReason = "too many connections for this user"
)

// slot is one of a user's connection slots, held for one connection
// (admit). Bind the connection once it exists; release the slot when it
// ends.
type slot struct {
	s     *Server
	lease ratelimit.Lease
}

// bind names the connection to close if the slot is lost; one lost before
// is closed at once.
func (sl slot) bind(c *hub.Conn) {
	if sl.s.slotConns.bind(sl.lease, c) {
		c.Close(CloseSlotLost, closeSlotLostReason)
	}
}

// release gives the slot back. A release that fails is retried by the
// limiter's heartbeat (ratelimit.Concurrency.Run).
func (sl slot) release() {
	sl.s.slotConns.remove(sl.lease)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := sl.s.slots.Release(ctx, sl.lease); err != nil {
		sl.s.log.Warn("connection slot not released yet; the limiter retries at its next heartbeat", "err", err)
	}
}

// SlotLost closes the connection whose slot the limiter lost
// (ratelimit.ConcurrencyConfig.OnLost): after this replica was taken for
// dead, its user filled the cap elsewhere. It is closed with
// CloseSlotLost (1013, "too many connections for this user").
func (s *Server) SlotLost(l ratelimit.Lease) {
	if c := s.slotConns.lose(l); c != nil {
		s.log.Info("connection closed: its user filled the connection cap while this replica was taken for dead", "user", c.User)
		c.Close(CloseSlotLost, closeSlotLostReason)
	}
}

// slotConns are the connections of the slots held, by lease.
type slotConns struct {
	mu sync.Mutex
	m  map[ratelimit.Lease]*slotConn // guarded by mu
}

type slotConn struct {
	conn *hub.Conn // nil until bound
	lost bool      // lost before it was bound
}

func (sc *slotConns) add(l ratelimit.Lease) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.m == nil {
		sc.m = make(map[ratelimit.Lease]*slotConn)
	}
	sc.m[l] = &slotConn{}
}

// bind records l's connection and reports whether l was lost already.
func (sc *slotConns) bind(l ratelimit.Lease, c *hub.Conn) (lost bool) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	e := sc.m[l]
	if e == nil {
		return false
	}
	e.conn = c
	return e.lost
}

// lose marks l lost and returns its connection, nil when none is bound.
func (sc *slotConns) lose(l ratelimit.Lease) *hub.Conn {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	e := sc.m[l]
	if e == nil {
		return nil
	}
	e.lost = true
	return e.conn
}

func (sc *slotConns) remove(l ratelimit.Lease) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	delete(sc.m, l)
}
