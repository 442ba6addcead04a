package broker_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

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

// fastFaults finds moved or stale pub/sub connections within a second.
var fastFaults = broker.RedisOptions{ResyncInterval: 200 * time.Millisecond, ProbeInterval: 500 * time.Millisecond, ProbeTimeout: 500 * time.Millisecond}

func TestRedisClusterConformance(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	rdb := c.Client()
	brokertest.Run(t, func(t *testing.T, h broker.Handler) broker.Broker {
		return newClusterBroker(t, rdb, h, broker.RedisOptions{Classic: true})
	})
}

// partitionSlot returns the hash slot of partition p's keys.
func partitionSlot(t *testing.T, rdb *redis.ClusterClient, p int) int {
	t.Helper()
	n, err := rdb.ClusterKeySlot(context.Background(), events.Tag(p)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// ownerOf returns the master that serves slot among masters.
func ownerOf(masters []redistest.ClusterNode, slot int) redistest.ClusterNode {
	for _, m := range masters {
		for _, r := range m.Slots {
			if slot >= r[0] && slot <= r[1] {
				return m
			}
		}
	}
	return redistest.ClusterNode{}
}

// spreadChannels returns perMaster channels on each master, each in a
// partition of its own.
func spreadChannels(t *testing.T, c *redistest.Cluster, rdb *redis.ClusterClient, prefix string, perMaster int) []string {
	t.Helper()
	masters := c.Masters()
	have := map[string]int{}
	used := map[int]bool{}
	var out []string
	for i := 0; len(out) < perMaster*len(masters); i++ {
		ch := fmt.Sprintf("public:%s-%d", prefix, i)
		p := events.Partition(ch)
		m := ownerOf(masters, partitionSlot(t, rdb, p))
		if used[p] || have[m.ID] >= perMaster {
			continue
		}
		used[p] = true
		have[m.ID]++
		out = append(out, ch)
	}
	return out
}

// shardChannels returns the Herald shard channels subscribed on the node
// at addr, sorted.
func shardChannels(t *testing.T, addr string) []string {
	t.Helper()
	n := redis.NewClient(&redis.Options{Addr: addr})
	defer n.Close()
	chs, err := n.PubSubShardChannels(context.Background(), names.Prefix+"herald:*:c:*").Result()
	if err != nil {
		t.Fatalf("PUBSUB SHARDCHANNELS on %s: %v", addr, err)
	}
	slices.Sort(chs)
	return chs
}

// TestRedisClusterShardedSubscriptions: a broker subscribes each channel
// with SSUBSCRIBE on the node that owns the channel's slot, and only the
// channels its subscribers want: every node lists exactly the wanted
// channels it owns, with as many subscribers as brokers want them, and
// forgets them when they are no longer wanted.
func TestRedisClusterShardedSubscriptions(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	rdb := c.Client()
	chans := spreadChannels(t, c, rdb, "shard", 4)
	a := newClusterBroker(t, rdb, newIDLog().Handle, broker.RedisOptions{})
	b := newClusterBroker(t, rdb, newIDLog().Handle, broker.RedisOptions{})
	subscribeAll(t, a, chans[:8]) // a wants the first 8
	subscribeAll(t, b, chans[4:]) // b the last 8: 4 channels both want
	masters := c.Masters()
	check := func(want map[string]int) {
		t.Helper()
		for _, m := range masters {
			var wantHere []string
			for ch := range want {
				if ownerOf(masters, partitionSlot(t, rdb, events.Partition(ch))).ID == m.ID {
					wantHere = append(wantHere, names.PubSub(ch))
				}
			}
			slices.Sort(wantHere)
			if got := shardChannels(t, m.Addr); !slices.Equal(got, wantHere) {
				t.Errorf("node %s: shard channels %v, want %v", m.Addr, got, wantHere)
			}
			n := redis.NewClient(&redis.Options{Addr: m.Addr})
			for ch, subs := range want {
				got, err := n.PubSubShardNumSub(context.Background(), names.PubSub(ch)).Result()
				if err != nil {
					t.Fatal(err)
				}
				mine := slices.Contains(wantHere, names.PubSub(ch))
				if w := map[bool]int64{true: int64(subs), false: 0}[mine]; got[names.PubSub(ch)] != w {
					t.Errorf("node %s: SHARDNUMSUB %s = %d, want %d", m.Addr, ch, got[names.PubSub(ch)], w)
				}
			}
			n.Close()
		}
	}
	want := map[string]int{}
	for i, ch := range chans {
		want[ch] = map[bool]int{true: 2, false: 1}[i >= 4 && i < 8]
	}
	check(want)
	if s := a.Stats(); s.Connections != 8 {
		t.Errorf("a has %d pub/sub connections, want 8 (one per partition)", s.Connections)
	}

	a.Unsubscribe(chans[:8]...)
	for _, ch := range chans[:4] {
		delete(want, ch)
	}
	for _, ch := range chans[4:8] {
		want[ch] = 1
	}
	eventually(t, "a's channels to leave the shards", func() bool {
		for _, m := range masters {
			for _, ch := range shardChannels(t, m.Addr) {
				if strings.HasSuffix(ch, ":c:"+chans[0]) {
					return false
				}
			}
		}
		return true
	})
	// Unsubscribes of one round go out together: once the first channel's
	// is through, a barrier after them proves the rest.
	id := brokertest.Must(t, b, "", events.Publication{Channel: chans[4], Event: "m"})[0]
	_ = id
	eventually(t, "the shards to list only b's channels", func() bool {
		n := 0
		for _, m := range masters {
			n += len(shardChannels(t, m.Addr))
		}
		return n == len(want)
	})
	check(want)
}

// TestRedisClusterProbesHoldSteady: on a quiet cluster every connection's
// probe comes back, also the classic ingress's plain one, whose PUBLISH a
// cluster counts only on the node that took it: nothing is replaced.
func TestRedisClusterProbesHoldSteady(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	rdb := c.Client()
	b := newClusterBroker(t, rdb, newIDLog().Handle, broker.RedisOptions{Classic: true, ProbeInterval: 100 * time.Millisecond, ProbeTimeout: time.Second})
	subscribeAll(t, b, spreadChannels(t, c, rdb, "quiet", 2))
	eventually(t, "ten probes per connection", func() bool { s := b.Stats(); return s.Probes >= uint64(10*s.Connections) })
	if s := b.Stats(); s.Replacements != 0 {
		t.Errorf("%d connections replaced on a quiet cluster, want none", s.Replacements)
	}
}

// TestRedisClusterSlotMovesMidStream: while events stream at over 1,000/s
// to two brokers, the slots of three partitions with live channels move to
// other masters (keys, history and all). Each broker follows its channels
// to their new nodes and refills what it missed: every subscriber ends
// with exactly the acknowledged events, in order, without duplicates.
func TestRedisClusterSlotMovesMidStream(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0)
	rdb := c.Client()
	chans := spreadChannels(t, c, rdb, "move", 4)
	log := events.NewRedisLog(rdb, names, events.LogConfig{Sharded: true, HistorySize: 100000})
	logs := []*idLog{newIDLog(), newIDLog()}
	var brokers []*broker.Redis
	for _, l := range logs {
		b := newClusterBroker(t, rdb, l.Handle, fastFaults)
		subscribeAll(t, b, chans)
		brokers = append(brokers, b)
	}
	s := startStream(t, chans, 12, 1200, appendOne(log))
	s.waitTotal(1000)
	masters := c.Masters()
	for i, ch := range chans[:12:12] {
		if i%4 != 0 {
			continue // one channel of each master
		}
		slot := partitionSlot(t, rdb, events.Partition(ch))
		from := ownerOf(masters, slot)
		to := masters[(slices.IndexFunc(masters, func(m redistest.ClusterNode) bool { return m.ID == from.ID })+1)%len(masters)]
		c.MoveSlot(slot, from, to)
		t.Logf("moved slot %d (%s) from %s to %s", slot, ch, from.Addr, to.Addr)
		s.waitTotal(s.total() + 500)
	}
	s.waitTotal(s.total() + 1000)
	s.check(logs...)
	s.checkHistory(log)
	for i, b := range brokers {
		st := b.Stats()
		t.Logf("broker %d: %d moves, %d replacements, %d refilled, %d gaps", i, st.Moves, st.Replacements, st.Refilled, st.RefillGaps)
		if st.Moves < 3 || st.RefillGaps != 0 {
			t.Errorf("broker %d: %d moves and %d gaps, want at least 3 and none", i, st.Moves, st.RefillGaps)
		}
	}
}

// TestRedisClusterMasterKilledMidStream: while events stream to two
// brokers, a master is killed; its replica takes over its slots. Publishes
// wait for a replica's confirmation (ReplicaAcks), so none acknowledged is
// lost with the master; the promoted replica, alone, confirms nothing, so
// its publishes are refused and retried until the killed node is back as
// its replica. Every subscriber, and every channel's history, ends with
// exactly the acknowledged events, in order.
func TestRedisClusterMasterKilledMidStream(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	rdb := c.Client()
	chans := spreadChannels(t, c, rdb, "kill", 4)
	log := events.NewRedisLog(rdb, names, events.LogConfig{Sharded: true, HistorySize: 100000, ReplicaAcks: 1, ReplicaTimeout: 200 * time.Millisecond})
	logs := []*idLog{newIDLog(), newIDLog()}
	for _, l := range logs {
		b := newClusterBroker(t, rdb, l.Handle, fastFaults)
		subscribeAll(t, b, chans)
	}
	s := startStream(t, chans, 12, 1200, appendOne(log))
	s.waitTotal(1000)
	victim := c.Node(ownerOf(c.Masters(), partitionSlot(t, rdb, events.Partition(chans[0]))).Addr)
	victim.Kill()
	t.Logf("killed master %s after %d events", victim.Addr, s.total())
	c.WaitHealthy()
	t.Logf("its replica took over: %s now served by %s", chans[0], ownerOf(c.Masters(), partitionSlot(t, rdb, events.Partition(chans[0]))).Addr)
	victim.Restart() // back as the new master's replica
	c.WaitHealthy()
	s.waitTotal(s.total() + 1000)
	s.check(logs...)
	s.checkHistory(log)
}
