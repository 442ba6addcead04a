package broker_test

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/broker/brokertest"
	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

// newClusterBroker is newRedis on a Redis Cluster: sharded publishes and
// subscriptions.
func newClusterBroker(t *testing.T, rdb *redis.ClusterClient, h broker.Handler, opts broker.RedisOptions) *broker.Redis {
	t.Helper()
	log := events.NewRedisLog(rdb, names, events.LogConfig{Sharded: true})
	b := broker.NewRedis(rdb, log, names, h, testLogger(t), opts)
	t.Cleanup(func() { b.Close() })
	return b
}

func TestRedisClusterConformance(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	rdb := c.Client()
	brokertest.Run(t, func(t *testing.T, h broker.Handler) broker.Broker {
		return newClusterBroker(t, rdb, h, broker.RedisOptions{Classic: true})
	})
}
