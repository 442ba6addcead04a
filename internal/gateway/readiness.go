package gateway

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// probeFailures is how many backend pings in a row must fail before the
// gateway calls the backend down and stops admitting sockets and
// publishes: on a CPU-starved machine one ping can miss its deadline while
// Redis is fine, and a replica that flaps sends its clients elsewhere for
// nothing. The first ping that answers brings it back.
const probeFailures = 3

// notAnswered is why the backend counts as down until its first ping
// answers.
const notAnswered = "the backend has not answered yet"

// backendHealth is the backend as the readiness probe sees it.
type backendHealth struct {
	failures int                    // pings failed in a row; the probe loop's alone
	down     atomic.Pointer[string] // why the backend counts as down; nil when up
}

// unready says why the server does not accept sockets and publishes now,
// or "" when it does.
func (s *Server) unready() string {
	switch {
	case s.hub.Draining():
		return "draining"
	case s.backend.down.Load() != nil:
		return *s.backend.down.Load()
	case !s.watching.Load():
		return "the revocation watch is not subscribed yet"
	}
	return ""
}

// probeLoop pings the backend once a second and keeps backend in step.
func (s *Server) probeLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := s.broker.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.probed(err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probed records the outcome of one ping.
func (s *Server) probed(err error) {
	b := &s.backend
	if err == nil {
		b.failures = 0
		if was := b.down.Swap(nil); was != nil && *was != notAnswered {
			s.log.Info("backend reachable again")
		}
		return
	}
	b.failures++
	s.log.Debug("backend ping failed", "in_a_row", b.failures, "err", err)
	if b.failures == probeFailures {
		why := fmt.Sprintf("the backend is unreachable: %d pings in a row failed", b.failures)
		b.down.Store(&why)
		s.log.Error("backend unreachable: refusing new sockets and publishes", "pings_failed", b.failures, "err", err)
	}
}
