package events_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

// listen subscribes to the pub/sub channels of chs and returns a function
// that waits for the next n messages.
func listen(t *testing.T, rdb *redis.Client, names events.Names, chs ...string) func(n int) []string {
	t.Helper()
	var subs []string
	for _, ch := range chs {
		subs = append(subs, names.PubSub(ch))
	}
	ps := rdb.Subscribe(context.Background(), subs...)
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.Receive(context.Background()); err != nil { // the first confirmation
		t.Fatal(err)
	}
	for range subs[1:] {
		ps.Receive(context.Background())
	}
	msgs := ps.Channel()
	return func(n int) []string {
		t.Helper()
		var out []string
		timeout := time.After(10 * time.Second)
		for len(out) < n {
			select {
			case m := <-msgs:
				f, _ := events.FrameID([]byte(m.Payload))
				out = append(out, f)
			case <-timeout:
				t.Fatalf("got %d of %d messages", len(out), n)
			}
		}
		return out
	}
}

// TestReplicaAcks: with replica acknowledgements a publish returns, and
// its message goes out, only once a replica has its events; without a
// replica it fails with ErrNotReplicated and nobody receives it, and a
// later publish that a replica confirms sends both, in order.
func TestReplicaAcks(t *testing.T) {
	primary := redistest.Start(t)
	rdb := primary.Client()
	ctx := context.Background()
	names := events.Names{Prefix: "ra:"}
	l := events.NewRedisLog(rdb, names, events.LogConfig{ReplicaAcks: 1, ReplicaTimeout: 100 * time.Millisecond})
	next := listen(t, rdb, names, "user:a", "user:b")

	tctx, cancel := context.WithTimeout(ctx, 400*time.Millisecond)
	_, err := l.Append(tctx, "", events.Publication{Channel: "user:a", Event: "e"})
	cancel()
	if !errors.Is(err, events.ErrNotReplicated) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publish without a replica: %v, want ErrNotReplicated", err)
	}
	r, err := l.Range(ctx, "user:a", "")
	if err != nil || len(r.Events) != 1 {
		t.Fatalf("history: %v, %v; want the unconfirmed event kept", r.Events, err)
	}
	held := r.Events[0].ID

	host, port, _ := net.SplitHostPort(primary.Addr)
	redistest.Start(t, "--replicaof", host, port)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(rdb.Info(ctx, "replication").Val(), "state=online") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling the replica's sync, not synchronising
	}
	ids, err := l.Append(ctx, "k:1", events.Publication{Channel: "user:b", Event: "e"}, events.Publication{Channel: "user:a", Event: "e"})
	if err != nil {
		t.Fatalf("publish with a replica: %v", err)
	}
	// The unconfirmed event goes out first, then the confirmed ones.
	if got, want := next(3), []string{held, ids[0], ids[1]}; !slices.Equal(got, want) {
		t.Errorf("messages %v, want %v", got, want)
	}
	// A repeat (same key) returns the ids and sends nothing again.
	again, err := l.Append(ctx, "k:1", events.Publication{Channel: "user:b", Event: "e"}, events.Publication{Channel: "user:a", Event: "e"})
	if err != nil || !slices.Equal(again, ids) {
		t.Fatalf("repeat: %v, %v; want %v", again, err, ids)
	}
	last, err := l.Append(ctx, "", events.Publication{Channel: "user:a", Event: "e"})
	if err != nil {
		t.Fatal(err)
	}
	if got := next(1); got[0] != last[0] {
		t.Errorf("after the repeat: message %v, want %s only", got, last[0])
	}
	if n := rdb.LLen(ctx, names.Outbox("")).Val(); n != 0 {
		t.Errorf("outbox holds %d entries after the flushes", n)
	}
}

// TestReplicaAcksOnACluster: on a cluster a batch spanning partitions on
// several masters is confirmed by each master's replica and flushed per
// partition.
func TestReplicaAcksOnACluster(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	rdb := c.Client()
	ctx := context.Background()
	names := events.Names{Prefix: "rc:"}
	l := events.NewRedisLog(rdb, names, events.LogConfig{Sharded: true, ReplicaAcks: 1})
	var pubs []events.Publication
	for _, ch := range []string{"user:1", "user:2", "user:3", "user:4", "user:5", "user:6"} {
		pubs = append(pubs, events.Publication{Channel: ch, Event: "e"})
	}
	ids, err := l.Append(ctx, "k:batch", pubs...)
	if err != nil {
		t.Fatal(err)
	}
	waits := 0
	for i, p := range pubs {
		r, err := l.Range(ctx, p.Channel, "")
		if err != nil || len(r.Events) != 1 || r.Events[0].ID != ids[i] {
			t.Errorf("%s: history %v (%v), want %s", p.Channel, r.Events, err, ids[i])
		}
		n, err := rdb.LLen(ctx, names.Outbox(events.Tag(events.Partition(p.Channel)))).Result()
		if err != nil || n != 0 {
			t.Errorf("outbox of %s: %d entries (%v), want flushed", p.Channel, n, err)
		}
	}
	for _, m := range c.Masters() {
		n := redis.NewClient(&redis.Options{Addr: m.Addr})
		if strings.Contains(n.Info(ctx, "commandstats").Val(), "cmdstat_wait:") {
			waits++
		}
		n.Close()
	}
	if waits == 0 {
		t.Error("no master ran WAIT")
	}
}
