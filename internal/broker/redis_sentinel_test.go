package broker_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

// TestRedisSentinelFailoverMidStream: while events stream to two brokers
// through a Sentinel-managed primary, SENTINEL FAILOVER promotes its
// replica. Publishes wait for the replica's confirmation (ReplicaAcks), so
// the writes the old primary takes after the promotion are never
// confirmed, never published to subscribers and are retried, with their
// idempotency keys, on the new primary. The brokers' pub/sub connections,
// left on the old primary, are found by the probe and moved; the refill
// covers the switch. Every subscriber ends with exactly the acknowledged
// events, in order, once.
func TestRedisSentinelFailoverMidStream(t *testing.T) {
	s := redistest.StartSentinel(t, 1, 1)
	rdb := s.Client()
	chans := make([]string, 12)
	for i := range chans {
		chans[i] = fmt.Sprintf("public:failover-%d", i)
	}
	log := events.NewRedisLog(rdb, names, events.LogConfig{HistorySize: 100000, ReplicaAcks: 1, ReplicaTimeout: 200 * time.Millisecond})
	logs := []*idLog{newIDLog(), newIDLog()}
	var brokers []*broker.Redis
	for _, l := range logs {
		b := broker.NewRedis(rdb, log, names, l.Handle, testLogger(t), fastFaults)
		t.Cleanup(func() { b.Close() })
		subscribeAll(t, b, chans)
		brokers = append(brokers, b)
	}
	st := startStream(t, chans, 12, 1200, appendOne(log))
	st.waitTotal(1000)
	old := s.Primary()
	now := s.Failover()
	t.Logf("failed over from %s to %s after %d events", old, now, st.total())
	// Sentinel turns the old primary into a replica of the new one after a
	// while (about 20 s with these settings); do it at once, as an
	// operator could, so that the new primary soon has a replica to
	// confirm publishes. Until then they are refused and retried.
	host, port, _ := net.SplitHostPort(now)
	op := redis.NewClient(&redis.Options{Addr: old})
	if err := op.ReplicaOf(context.Background(), host, port).Err(); err != nil {
		t.Fatal(err)
	}
	op.Close()
	s.WaitReplicas(1)
	st.waitTotal(st.total() + 1000)
	st.check(logs...)
	st.checkHistory(log)
	for i, b := range brokers {
		stats := b.Stats()
		t.Logf("broker %d: %d replacements, %d resubscribes, %d refilled, %d gaps", i, stats.Replacements, stats.Resubscribes, stats.Refilled, stats.RefillGaps)
		if stats.RefillGaps != 0 {
			t.Errorf("broker %d reported %d gaps", i, stats.RefillGaps)
		}
	}
}
