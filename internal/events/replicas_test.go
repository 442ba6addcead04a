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
	entries, err := rdb.LRange(ctx, names.History("user:a"), 0, -1).Result()
	if err != nil || len(entries) != 1 {
		t.Fatalf("history list: %v, %v; want the unconfirmed event kept", entries, err)
	}
	held, _, _ := strings.Cut(entries[0], " ")
	// Kept, but not readable until confirmed.
	if r, err := l.Range(ctx, "user:a", ""); err != nil || len(r.Events) != 0 {
		t.Fatalf("history read: %v, %v; want no unconfirmed event", r.Events, err)
	}

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

// startReplica starts a replica of primary and waits until it is in sync.
func startReplica(t *testing.T, primary *redistest.Server) {
	t.Helper()
	ctx := context.Background()
	host, port, _ := net.SplitHostPort(primary.Addr)
	redistest.Start(t, "--replicaof", host, port)
	rdb := primary.Client()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(rdb.Info(ctx, "replication").Val(), "state=online") {
		if time.Now().After(deadline) {
			t.Fatal("the replica did not sync within 10s")
		}
		time.Sleep(10 * time.Millisecond) // polling the replica's sync, not synchronising
	}
}

func rangeIDs(t *testing.T, l *events.RedisLog, channel, since string) ([]string, bool) {
	t.Helper()
	r, err := l.Range(context.Background(), channel, since)
	if err != nil {
		t.Fatalf("Range(%s, %q): %v", channel, since, err)
	}
	var ids []string
	for _, e := range r.Events {
		ids = append(ids, e.ID)
	}
	return ids, r.Complete
}

// TestUnconfirmedEventsAreNotRead: an event that waits for a replica's
// confirmation is neither in a history read (refill, resume) nor a
// baseline, on a new channel and on one with confirmed events; once a
// replica has it, the periodic flush publishes it and reads see it.
func TestUnconfirmedEventsAreNotRead(t *testing.T) {
	primary := redistest.Start(t)
	rdb := primary.Client()
	ctx := context.Background()
	names := events.Names{Prefix: "uc:"}
	direct := events.NewRedisLog(rdb, names, events.LogConfig{})
	acked := events.NewRedisLog(rdb, names, events.LogConfig{ReplicaAcks: 1, ReplicaTimeout: 50 * time.Millisecond})
	next := listen(t, rdb, names, "user:old", "user:new")

	first, err := direct.Append(ctx, "", events.Publication{Channel: "user:old", Event: "e"})
	if err != nil {
		t.Fatal(err)
	}
	if got := next(1); got[0] != first[0] {
		t.Fatalf("message %v, want %s", got, first[0])
	}
	for _, ch := range []string{"user:old", "user:new"} {
		tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := acked.Append(tctx, "", events.Publication{Channel: ch, Event: "e"})
		cancel()
		if err == nil {
			t.Fatalf("%s: publish with no replica succeeded", ch)
		}
	}
	if ids, _ := rangeIDs(t, direct, "user:old", ""); !slices.Equal(ids, first) {
		t.Errorf("user:old history: %v, want %v only", ids, first)
	}
	if ids, complete := rangeIDs(t, direct, "user:old", first[0]); len(ids) != 0 || !complete {
		t.Errorf("user:old history after %s: %v (complete %v), want nothing, complete", first[0], ids, complete)
	}
	if ids, _ := rangeIDs(t, direct, "user:new", ""); len(ids) != 0 {
		t.Errorf("user:new history: %v, want nothing", ids)
	}
	base, err := direct.Baselines(ctx, []string{"user:old", "user:new"})
	if err != nil {
		t.Fatal(err)
	}
	if base[0] != first[0] {
		t.Errorf("user:old baseline %s, want the confirmed %s", base[0], first[0])
	}
	held, err := rdb.LRange(ctx, names.History("user:new"), 0, -1).Result()
	if err != nil || len(held) != 1 {
		t.Fatalf("user:new history list: %v, %v", held, err)
	}
	heldID, _, _ := strings.Cut(held[0], " ")
	if events.CompareIDs(base[1], heldID) >= 0 {
		t.Errorf("user:new baseline %s is not before its unconfirmed event %s", base[1], heldID)
	}

	// Nothing confirms them: the periodic flush leaves them.
	if n, err := acked.FlushPending(ctx); n != 0 || !errors.Is(err, events.ErrNotReplicated) {
		t.Errorf("FlushPending without a replica: %d, %v; want 0, ErrNotReplicated", n, err)
	}
	startReplica(t, primary)
	// The periodic flush tries again on every tick; a replica that just
	// synced may miss one WAIT's timeout.
	flushed := 0
	for try := 0; flushed < 2 && try < 50; try++ {
		n, err := acked.FlushPending(ctx)
		if err != nil && !errors.Is(err, events.ErrNotReplicated) {
			t.Fatal(err)
		}
		flushed += n
	}
	if flushed != 2 {
		t.Fatalf("FlushPending published %d entries, want 2", flushed)
	}
	got := next(2)
	if ids, _ := rangeIDs(t, direct, "user:old", ""); len(ids) != 2 || ids[0] != first[0] || !slices.Contains(got, ids[1]) {
		t.Errorf("user:old history after the flush: %v; messages %v", ids, got)
	}
	if ids, _ := rangeIDs(t, direct, "user:new", ""); !slices.Equal(ids, []string{heldID}) {
		t.Errorf("user:new history after the flush: %v, want [%s]", ids, heldID)
	}
	for _, ch := range []string{"user:old", "user:new"} {
		if rdb.HExists(ctx, names.Record(ch), "c").Val() {
			t.Errorf("%s: the confirmed mark is left after everything was published", ch)
		}
	}
}

// TestMixedReplicaAcksKeepOrder: a publisher without replica acks on a
// channel whose earlier events wait in the outbox does not overtake them:
// its event is queued behind them and goes out right after them, so a
// subscriber gets every event once, in order (it would drop an older id
// arriving after a newer one as a duplicate).
func TestMixedReplicaAcksKeepOrder(t *testing.T) {
	primary := redistest.Start(t)
	rdb := primary.Client()
	ctx := context.Background()
	names := events.Names{Prefix: "mx:"}
	direct := events.NewRedisLog(rdb, names, events.LogConfig{HistorySize: 1000})
	acked := events.NewRedisLog(rdb, names, events.LogConfig{HistorySize: 1000, ReplicaAcks: 1, ReplicaTimeout: 50 * time.Millisecond})
	next := listen(t, rdb, names, "user:m")

	// No replica yet: the acked event waits in the outbox.
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := acked.Append(tctx, "", events.Publication{Channel: "user:m", Event: "e"})
	cancel()
	if err == nil {
		t.Fatal("publish with no replica succeeded")
	}
	later, err := direct.Append(ctx, "", events.Publication{Channel: "user:m", Event: "e"})
	if err != nil {
		t.Fatal(err)
	}
	if n := rdb.LLen(ctx, names.Outbox("")).Val(); n != 2 {
		t.Errorf("outbox holds %d entries, want both events queued", n)
	}
	startReplica(t, primary)
	more, err := acked.Append(ctx, "", events.Publication{Channel: "user:m", Event: "e"})
	if err != nil {
		t.Fatal(err)
	}
	last, err := direct.Append(ctx, "", events.Publication{Channel: "user:m", Event: "e"})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := rangeIDs(t, direct, "user:m", "")
	if len(want) != 4 || want[1] != later[0] || want[2] != more[0] || want[3] != last[0] {
		t.Fatalf("history %v, want 4 events ending %s %s %s", want, later[0], more[0], last[0])
	}
	if got := next(4); !slices.Equal(got, want) {
		t.Errorf("messages %v, want %v", got, want)
	}

	// Concurrently, with a replica: every event once, in id order.
	const n = 200
	errs := make(chan error, 2)
	for _, l := range []*events.RedisLog{direct, acked} {
		go func() {
			for range n {
				if _, err := l.Append(ctx, "", events.Publication{Channel: "user:m", Event: "e"}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	got := next(2 * n)
	hist, _ := rangeIDs(t, direct, "user:m", last[0])
	if !slices.Equal(got, hist) {
		t.Errorf("messages differ from history: %d messages, %d in history", len(got), len(hist))
	}
	if !slices.IsSortedFunc(got, events.CompareIDs) {
		t.Error("messages out of id order")
	}
}
