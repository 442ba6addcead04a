package session_test

import (
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/redistest"
	"github.com/heraldgw/herald/internal/session"
	"github.com/heraldgw/herald/internal/session/sessiontest"
)

// TestRedisOnACluster runs the store's conformance suite on a Redis
// Cluster: every command and script touches one key (sessions, tickets),
// the revocation script's PUBLISH reaches every node, and the session
// check pipelines its GETs per node.
func TestRedisOnACluster(t *testing.T) {
	rdb := redistest.StartCluster(t, 3, 0).Client()
	sessiontest.Run(t, func(t *testing.T, now func() time.Time) session.Store {
		return session.NewRedis(rdb, names, nil, now)
	})
}
