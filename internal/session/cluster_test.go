package session_test

import (
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
	"github.com/heraldgw/herald/internal/session"
	"github.com/heraldgw/herald/internal/session/sessiontest"
)

// TestRedisOnACluster runs the store's conformance suite on a Redis
// Cluster: every command and script touches one key (sessions, tickets),
// the revocation script's PUBLISH reaches every node, and the session
// check pipelines its GETs per node. Each subtest has its own names: a
// cluster passes a PUBLISH to the other nodes over its bus, so a
// revocation of one subtest could still be on its way when the next one
// watches.
func TestRedisOnACluster(t *testing.T) {
	rdb := redistest.StartCluster(t, 3, 0).Client()
	sessiontest.Run(t, func(t *testing.T, now func() time.Time) session.Store {
		return session.NewRedis(rdb, events.Names{Prefix: t.Name() + ":"}, nil, now)
	})
}
