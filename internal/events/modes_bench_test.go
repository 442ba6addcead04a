package events_test

import (
	"context"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

// BenchmarkAppendModes publishes one event per call from 64 goroutines, as
// a gateway under load does, to 1,000 channels, through each Redis
// deployment: one server; one server whose replica must confirm each
// publish (replica acks: WAIT, then the outbox flush); a Redis Cluster of
// one and of three masters; three masters with a replica each and replica
// acks. It reports Redis's CPU per event summed over the masters (and the
// busiest master's share), and events per script call.
//
//	go test -run '^$' -bench BenchmarkAppendModes -benchtime 20000x ./internal/events/
func BenchmarkAppendModes(b *testing.B) {
	modes := []struct {
		name  string
		start func(b *testing.B) (redis.UniversalClient, []*redis.Client, events.LogConfig)
	}{
		{"single", func(b *testing.B) (redis.UniversalClient, []*redis.Client, events.LogConfig) {
			c := redistest.Start(b).Client()
			return c, []*redis.Client{c}, events.LogConfig{}
		}},
		{"single-replica-acks", func(b *testing.B) (redis.UniversalClient, []*redis.Client, events.LogConfig) {
			primary := redistest.Start(b)
			host, port, _ := net.SplitHostPort(primary.Addr)
			redistest.Start(b, "--replicaof", host, port)
			c := primary.Client()
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(c.Info(context.Background(), "replication").Val(), "state=online"); {
				if time.Now().After(deadline) {
					b.Fatal("the replica did not sync")
				}
				time.Sleep(10 * time.Millisecond) // polling the replica's sync
			}
			return c, []*redis.Client{c}, events.LogConfig{ReplicaAcks: 1}
		}},
		{"cluster-1-master", clusterMode(1, 0)},
		{"cluster-3-masters", clusterMode(3, 0)},
		{"cluster-3-masters-replica-acks", clusterMode(3, 1)},
	}
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			rdb, masters, cfg := m.start(b)
			benchAppendOn(b, rdb, masters, cfg)
		})
	}
}

// clusterMode starts a cluster of masters with replicas each; with
// replicas, publishes wait for one.
func clusterMode(masters, replicas int) func(b *testing.B) (redis.UniversalClient, []*redis.Client, events.LogConfig) {
	return func(b *testing.B) (redis.UniversalClient, []*redis.Client, events.LogConfig) {
		c := redistest.StartCluster(b, masters, replicas)
		var nodes []*redis.Client
		for _, m := range c.Masters() {
			n := redis.NewClient(&redis.Options{Addr: m.Addr})
			b.Cleanup(func() { n.Close() })
			nodes = append(nodes, n)
		}
		return c.Client(), nodes, events.LogConfig{Sharded: true, ReplicaAcks: min(replicas, 1)}
	}
}

func benchAppendOn(b *testing.B, rdb redis.UniversalClient, masters []*redis.Client, cfg events.LogConfig) {
	ctx := context.Background()
	l := events.NewRedisLog(rdb, events.Names{}, cfg)
	data := json.RawMessage(`{"userEffectId":"6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b","resultUrl":"https://cdn.example/r.png","ts":1}`)
	prefix := "bench-m" + strconv.FormatInt(int64(b.N), 10) + ":"
	for i := range 1000 { // steady state: every channel has a history
		if _, err := l.Append(ctx, "", events.Publication{Channel: "user:" + prefix + strconv.Itoa(i), Event: "e", Data: data}); err != nil {
			b.Fatal(err)
		}
	}
	cpu0 := make([]float64, len(masters))
	for i, m := range masters {
		m.ConfigResetStat(ctx)
		cpu0[i] = redisCPU(b, m)
	}
	publishConcurrently(b, l, prefix, data)
	total, busiest, scripts := 0.0, 0.0, int64(0)
	for i, m := range masters {
		cpu := redisCPU(b, m) - cpu0[i]
		total += cpu
		busiest = max(busiest, cpu)
		scripts += scriptCalls(b, m)
	}
	b.ReportMetric(total*1e6/float64(b.N), "redis-cpu-µs/event")
	b.ReportMetric(busiest/total, "busiest-master-share")
	b.ReportMetric(float64(b.N)/float64(scripts), "events/script")
}

// scriptCalls returns the EVALSHA calls in rdb's commandstats, 0 when none.
func scriptCalls(tb testing.TB, rdb *redis.Client) int64 {
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_evalsha:calls="); ok {
			n, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
			return n
		}
	}
	return 0
}

// BenchmarkChannelMemory reports what Redis holds per channel (MEMORY
// USAGE of its history and its record) after 1, 10 and 100 events of
// about 120 bytes of data. The b.N loop publishes them on b.N channels.
//
//	go test -run '^$' -bench BenchmarkChannelMemory -benchtime 100x ./internal/events/
func BenchmarkChannelMemory(b *testing.B) {
	rdb := redistest.Start(b).Client()
	ctx := context.Background()
	names := events.Names{}
	l := events.NewRedisLog(rdb, names, events.LogConfig{})
	data := json.RawMessage(`{"userEffectId":"6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b","resultUrl":"https://cdn.example/r.png","ts":1732600000000}`)
	for _, n := range []int{1, 10, 100} {
		b.Run(strconv.Itoa(n)+"-events", func(b *testing.B) {
			var hist, rec int64
			for i := range b.N {
				ch := "user:mem-" + strconv.Itoa(n) + "-" + strconv.Itoa(i)
				for range n {
					if _, err := l.Append(ctx, "", events.Publication{Channel: ch, Event: "effect.complete", Data: data}); err != nil {
						b.Fatal(err)
					}
				}
				hist += rdb.MemoryUsage(ctx, names.History(ch)).Val()
				rec += rdb.MemoryUsage(ctx, names.Record(ch)).Val()
			}
			b.ReportMetric(float64(hist)/float64(b.N), "history-B/channel")
			b.ReportMetric(float64(rec)/float64(b.N), "record-B/channel")
		})
	}
}

// publishConcurrently publishes b.N events from 64 goroutines (on 2
// cores) to the 1,000 channels "user:{prefix}{0…999}", timing only that.
func publishConcurrently(b *testing.B, l *events.RedisLog, prefix string, data json.RawMessage) {
	ctx := context.Background()
	var next atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			p := events.Publication{Channel: "user:" + prefix + strconv.FormatInt(i%1000, 10), Event: "effect.complete", Data: data}
			if _, err := l.Append(ctx, "", p); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
}
