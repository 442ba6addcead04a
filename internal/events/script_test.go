package events_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

func TestNamesRoundTrip(t *testing.T) {
	for _, prefix := range []string{"", "app1:"} {
		n := events.Names{Prefix: prefix}
		for _, ch := range []string{"user:42", "effect:6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b", "public:a:b"} {
			if got, ok := n.ChannelOf(n.PubSub(ch)); !ok || got != ch {
				t.Errorf("ChannelOf(PubSub(%q)) = %q, %v", ch, got, ok)
			}
			tag := events.Tag(events.Partition(ch))
			for _, key := range []string{n.PubSub(ch), n.History(ch), n.Record(ch), n.Idempotency(tag, "k:x")} {
				if !strings.Contains(key, tag) {
					t.Errorf("%s lacks the hash tag %s of %s", key, tag, ch)
				}
			}
		}
		for _, bad := range []string{"", prefix + "herald:{h1}:h:user:1", prefix + "herald:{h1}:c:user:1", "herald:ch:user:1"} {
			if ch, ok := n.ChannelOf(bad); ok {
				t.Errorf("ChannelOf(%q) = %q, want not ok", bad, ch)
			}
		}
	}
}

// TestPartitionsSpreadOverSlots: the 64 partition tags hash to 64 distinct
// Redis Cluster slots, so partitions spread over a cluster's masters.
func TestPartitionsSpreadOverSlots(t *testing.T) {
	seen := map[int]int{}
	for p := range events.Partitions {
		tag := events.Tag(p)
		slot := slot(tag[1 : len(tag)-1])
		if q, dup := seen[slot]; dup {
			t.Errorf("partitions %d and %d share slot %d", q, p, slot)
		}
		seen[slot] = p
	}
}

// slot is Redis Cluster's key slot (CRC16-XMODEM mod 16384) of a hash tag.
func slot(s string) int {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

// TestChannelMemory: a channel holding one 100-byte event costs at most
// 1 KiB of Redis memory, all its keys together.
func TestChannelMemory(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	l := events.NewRedisLog(rdb, events.Names{}, events.LogConfig{})
	ch := "user:1234567"
	data := json.RawMessage(`"` + strings.Repeat("x", 98) + `"`)
	if _, err := l.Append(ctx, "", events.Publication{Channel: ch, Event: "effect.complete", Data: data}); err != nil {
		t.Fatal(err)
	}
	total := int64(0)
	for _, k := range []string{events.Names{}.History(ch), events.Names{}.Record(ch)} {
		n, err := rdb.MemoryUsage(ctx, k).Result()
		if err != nil {
			t.Fatalf("MEMORY USAGE %s: %v", k, err)
		}
		total += n
	}
	t.Logf("one 100-byte event: %d bytes of Redis memory (history and record)", total)
	if total > 1024 {
		t.Errorf("a channel with one 100-byte event costs %d bytes, want at most 1024", total)
	}
}

// BenchmarkAppend publishes one event per call on 1,000 channels in turn
// and reports the Redis time per event (INFO commandstats), the figure
// behind "Redis CPU per event":
//
//	go test -run '^$' -bench BenchmarkAppend -benchtime 20000x ./internal/events/
//
// With HERALD_BENCH_REDIS=host:port it publishes to that Redis instead of
// one of its own (scripts/redis-cost.sh runs one under callgrind to count
// instructions per event); it writes only channels of its own there.
func BenchmarkAppend(b *testing.B) {
	var rdb *redis.Client
	if addr := os.Getenv("HERALD_BENCH_REDIS"); addr != "" {
		rdb = redis.NewClient(&redis.Options{Addr: addr})
		defer rdb.Close()
	} else {
		rdb = redistest.Start(b).Client()
	}
	ctx := context.Background()
	l := events.NewRedisLog(rdb, events.Names{}, events.LogConfig{})
	pubs := make([]events.Publication, 1000)
	for i := range pubs {
		pubs[i] = events.Publication{Channel: "user:" + strconv.Itoa(i), Event: "effect.complete",
			Data: json.RawMessage(`{"userEffectId":"6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b","resultUrl":"https://cdn.example/r.png","ts":1}`)}
	}
	if _, err := l.Append(ctx, "", pubs[0]); err != nil { // loads the script
		b.Fatal(err)
	}
	prefix := "bench-" + strconv.FormatInt(int64(b.N), 10) + ":"
	for i := range pubs { // steady state: every channel has a history
		pubs[i].Channel = "user:" + prefix + strconv.Itoa(i)
		if _, err := l.Append(ctx, "", pubs[i]); err != nil {
			b.Fatal(err)
		}
	}
	rdb.ConfigResetStat(ctx)
	cpu0 := redisCPU(b, rdb)
	b.ResetTimer()
	for i := range b.N {
		if _, err := l.Append(ctx, "", pubs[i%len(pubs)]); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	usec, calls := commandStats(b, rdb, "evalsha")
	b.ReportMetric((redisCPU(b, rdb)-cpu0)*1e6/float64(b.N), "redis-cpu-µs/event")
	b.ReportMetric(usec/float64(b.N), "redis-µs/event")
	b.ReportMetric(float64(calls)/float64(b.N), "scripts/event")
}

// BenchmarkAppendConcurrent is BenchmarkAppend from 64 goroutines at once,
// as a gateway under load publishes: calls that wait for a script call
// under way are published together by the next one.
//
//	go test -run '^$' -bench BenchmarkAppendConcurrent -benchtime 20000x ./internal/events/
func BenchmarkAppendConcurrent(b *testing.B) {
	var rdb *redis.Client
	if addr := os.Getenv("HERALD_BENCH_REDIS"); addr != "" {
		rdb = redis.NewClient(&redis.Options{Addr: addr, PoolSize: 80})
		defer rdb.Close()
	} else {
		rdb = redistest.Start(b).Client()
	}
	ctx := context.Background()
	l := events.NewRedisLog(rdb, events.Names{}, events.LogConfig{})
	data := json.RawMessage(`{"userEffectId":"6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b","resultUrl":"https://cdn.example/r.png","ts":1}`)
	if _, err := l.Append(ctx, "", events.Publication{Channel: "user:warm", Event: "e", Data: data}); err != nil {
		b.Fatal(err)
	}
	prefix := "bench-c" + strconv.FormatInt(int64(b.N), 10) + ":"
	for i := range 1000 { // steady state: every channel has a history
		if _, err := l.Append(ctx, "", events.Publication{Channel: "user:" + prefix + strconv.Itoa(i), Event: "e", Data: data}); err != nil {
			b.Fatal(err)
		}
	}
	rdb.ConfigResetStat(ctx)
	cpu0 := redisCPU(b, rdb)
	publishConcurrently(b, l, prefix, data)
	usec, calls := commandStats(b, rdb, "evalsha")
	b.ReportMetric((redisCPU(b, rdb)-cpu0)*1e6/float64(b.N), "redis-cpu-µs/event")
	b.ReportMetric(usec/float64(b.N), "redis-µs/event")
	b.ReportMetric(float64(b.N)/float64(calls), "events/script")
}

// redisCPU returns the CPU seconds Redis used so far (user + system).
func redisCPU(tb testing.TB, rdb *redis.Client) float64 {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		tb.Fatal(err)
	}
	total := 0.0
	for _, line := range strings.Split(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k == "used_cpu_user" || k == "used_cpu_sys" {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return total
}

// commandStats returns the total µs and calls of a command since the last
// CONFIG RESETSTAT.
func commandStats(tb testing.TB, rdb *redis.Client, cmd string) (usec float64, calls int64) {
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":")
		if !ok {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "usec":
				usec, _ = strconv.ParseFloat(v, 64)
			case "calls":
				calls, _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	if calls == 0 {
		tb.Fatal(fmt.Sprintf("no %s calls in commandstats", cmd))
	}
	return usec, calls
}
