package broker_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
	"github.com/heraldgw/herald/internal/session"
)

// TestRedisSentinelFailoverMidStream: while events stream to two brokers
// through a Sentinel-managed primary with two replicas, SENTINEL FAILOVER
// promotes one of them and Sentinel points the other at it. Publishes wait
// for both replicas' confirmation (ReplicaAcks 2, as DELIVERY.md asks:
// with 1, the replica left on the old primary for a moment confirms
// writes the promoted one never gets, and about a second of acknowledged
// events is lost — seen). Writes the old primary takes after the
// promotion are never confirmed nor published, and are retried on the new
// primary, which refuses them too until it has two replicas again: the
// old primary rejoins only once the brokers' move has been checked, so no
// relay through it can hide a connection left behind. Around the switch
// some publishes lose their reply after they ran, and the stream
// publishes them again with the same idempotency key: the retry must
// return the first id.
//
// The brokers must move their pub/sub connections to the new primary (the
// primary watch and the probe): every channel's subscribers are counted
// there (PUBSUB NUMSUB), and each broker replaced connections. So must the
// session revocation watch (OnPrimaryChange): a revocation published on
// the new primary reaches it. Every subscriber ends with exactly the
// acknowledged events, in order, once; so does every history.
func TestRedisSentinelFailoverMidStream(t *testing.T) {
	s := redistest.StartSentinel(t, 2, 1)
	rdb := s.Client()
	chans := make([]string, 12)
	for i := range chans {
		chans[i] = fmt.Sprintf("public:failover-%d", i)
	}
	log := events.NewRedisLog(rdb, names, events.LogConfig{HistorySize: 100000, ReplicaAcks: 2, ReplicaTimeout: 200 * time.Millisecond})

	sessions := session.NewRedis(rdb, names, testLogger(t), nil)
	revoked := make(chan session.Revocation, 16)
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watching := make(chan struct{})
	var watchDone sync.WaitGroup
	watchDone.Go(func() {
		_ = sessions.Watch(watchCtx, func() { close(watching) }, func(r session.Revocation) { revoked <- r })
	})
	t.Cleanup(func() { stopWatch(); watchDone.Wait() })
	<-watching

	opts := fastFaults
	opts.WatchPrimary = true
	var changes atomic.Int64
	opts.OnPrimaryChange = func() { changes.Add(1); sessions.Resubscribe() }
	logs := []*idLog{newIDLog(), newIDLog()}
	var brokers []*broker.Redis
	for _, l := range logs {
		b := broker.NewRedis(rdb, log, names, l.Handle, testLogger(t), opts)
		t.Cleanup(func() { b.Close() })
		subscribeAll(t, b, chans)
		brokers = append(brokers, b)
	}

	// lose drops the reply of that many successful publishes: the stream
	// sees an error and publishes again with the same key.
	var lose atomic.Int64
	var mu sync.Mutex
	lost := map[string]string{} // key → the id of the publish whose reply was lost
	var lostRetried atomic.Int64
	publish := appendOne(log)
	st := startStream(t, chans, 12, 1200, func(ctx context.Context, key string, p events.Publication) (string, error) {
		id, err := publish(ctx, key, p)
		if err != nil {
			return "", err
		}
		mu.Lock()
		defer mu.Unlock()
		if first, ok := lost[key]; ok {
			lostRetried.Add(1)
			if id != first {
				t.Errorf("publish %s again: id %s, want the first run's %s", key, id, first)
			}
			delete(lost, key)
			return id, nil
		}
		if n := lose.Load(); n > 0 && lose.CompareAndSwap(n, n-1) {
			lost[key] = id
			return "", errors.New("injected: reply lost")
		}
		return id, nil
	})
	st.waitTotal(1000)
	old := s.Primary()
	lose.Store(12)
	now := s.Failover()
	t.Logf("failed over from %s to %s after %d events", old, now, st.total())
	lose.Add(12) // some while the new primary cannot confirm publishes yet

	// The pub/sub connections are on the new primary: each channel has
	// both brokers' subscriptions there.
	np := redis.NewClient(&redis.Options{Addr: now})
	defer np.Close()
	pubsubs := make([]string, len(chans))
	for i, ch := range chans {
		pubsubs[i] = names.PubSub(ch)
	}
	eventually(t, "every channel subscribed twice on the new primary", func() bool {
		counts, err := np.PubSubNumSub(context.Background(), pubsubs...).Result()
		if err != nil {
			return false
		}
		for _, ps := range pubsubs {
			if counts[ps] != 2 {
				return false
			}
		}
		return true
	})
	// The revocation watch moved too.
	eventually(t, "a revocation published on the new primary to reach the watch", func() bool {
		if err := np.Publish(context.Background(), names.Revocations(), `{"user":"u","sid":"h"}`).Err(); err != nil {
			return false
		}
		select {
		case r := <-revoked:
			return r.SessionHash == "h"
		case <-time.After(100 * time.Millisecond):
			return false
		}
	})

	// Now the old primary may rejoin, as a replica: publishes go through
	// again.
	host, port, _ := net.SplitHostPort(now)
	op := redis.NewClient(&redis.Options{Addr: old})
	if err := op.ReplicaOf(context.Background(), host, port).Err(); err != nil {
		t.Fatal(err)
	}
	op.Close()
	s.WaitReplicas(2)
	st.waitTotal(st.total() + 1000)
	st.check(logs...)
	st.checkHistory(log)
	if got := lostRetried.Load(); got != 24 {
		t.Errorf("%d publishes with a lost reply were retried, want 24", got)
	}
	if changes.Load() == 0 {
		t.Error("no broker saw the primary change")
	}
	for i, b := range brokers {
		stats := b.Stats()
		t.Logf("broker %d: %d primary changes, %d replacements, %d resubscribes, %d refilled, %d gaps, %d outbox entries flushed",
			i, stats.PrimaryChanges, stats.Replacements, stats.Resubscribes, stats.Refilled, stats.RefillGaps, stats.OutboxFlushed)
		if stats.Replacements == 0 {
			t.Errorf("broker %d replaced no pub/sub connection", i)
		}
		if stats.RefillGaps != 0 {
			t.Errorf("broker %d reported %d gaps", i, stats.RefillGaps)
		}
	}
}
