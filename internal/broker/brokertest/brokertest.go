// Package brokertest is the conformance suite every broker.Broker must
// pass, so that the in-memory twin and the Redis broker behave alike.
package brokertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/events"
)

// Run runs the conformance suite. newBroker returns a running broker that
// delivers to h; the suite closes it (Close must tolerate a second call).
// Brokers of one Run may share a backend: the suite uses fresh channel
// names in every subtest. It needs no sleeps: it waits for frames, and
// proves that something was not delivered with a later marker frame on a
// subscribed channel.
func Run(t *testing.T, newBroker func(t *testing.T, h broker.Handler) broker.Broker) {
	start := func(t *testing.T) (broker.Broker, *Recorder, func(string) string) {
		t.Helper()
		rec := NewRecorder()
		b := newBroker(t, rec.Handle)
		t.Cleanup(func() { b.Close() })
		return b, rec, channelNamer(t)
	}
	t.Run("Delivery", func(t *testing.T) { testDelivery(t, start) })
	t.Run("UnsubscribedDeliverNothing", func(t *testing.T) { testUnsubscribed(t, start) })
	t.Run("RefCounts", func(t *testing.T) { testRefCounts(t, start) })
	t.Run("OrderedIDs", func(t *testing.T) { testOrderedIDs(t, start) })
	t.Run("Batch", func(t *testing.T) { testBatch(t, start) })
	t.Run("Idempotency", func(t *testing.T) { testIdempotency(t, start) })
	t.Run("Validation", func(t *testing.T) { testValidation(t, start) })
	t.Run("SubscribeCancelled", func(t *testing.T) { testSubscribeCancelled(t, start) })
	t.Run("ResubscribeInFlight", func(t *testing.T) { testResubscribeInFlight(t, start) })
	t.Run("Churn", func(t *testing.T) { testChurn(t, start) })
	t.Run("ManyChannels", func(t *testing.T) { testManyChannels(t, start) })
	t.Run("History", func(t *testing.T) { testHistory(t, start) })
	t.Run("Baseline", func(t *testing.T) { testBaseline(t, start) })
	t.Run("Owners", func(t *testing.T) { testOwners(t, start) })
	t.Run("Close", func(t *testing.T) { testClose(t, newBroker) })
}

// testHistory checks the resume read: events after an id, oldest first,
// frames as delivered, and completeness against the default window of
// events.DefaultHistorySize events.
func testHistory(t *testing.T, start starter) {
	b, _, name := start(t)
	ctx := context.Background()
	ch := name("history")
	var ids []string
	for i := range events.DefaultHistorySize + 5 {
		ids = append(ids, Must(t, b, "", pub(ch, "n", strconv.Itoa(i)))...)
	}
	tests := []struct {
		since        string
		wantFirst    int // index in ids of the first event returned; -1: none
		wantN        int
		wantComplete bool
	}{
		{ids[len(ids)-3], len(ids) - 2, 2, true},
		{ids[4], 5, events.DefaultHistorySize, true}, // the newest trimmed event: nothing missed
		{ids[3], 5, events.DefaultHistorySize, false},
		{"", 5, events.DefaultHistorySize, false},
		{ids[len(ids)-1], -1, 0, true},
	}
	for _, tt := range tests {
		r, err := b.History(ctx, ch, tt.since)
		evs, complete := r.Events, r.Complete
		if err != nil {
			t.Fatalf("History(%q): %v", tt.since, err)
		}
		if len(evs) != tt.wantN || complete != tt.wantComplete {
			t.Errorf("History(%q) = %d events, complete %v; want %d, %v", tt.since, len(evs), complete, tt.wantN, tt.wantComplete)
			continue
		}
		for i, ev := range evs {
			want := ids[tt.wantFirst+i]
			f := events.AppendFrame(nil, want, pub(ch, "n", strconv.Itoa(tt.wantFirst+i)))
			if ev.ID != want || string(ev.Frame) != string(f) {
				t.Fatalf("History(%q)[%d] = %s %s, want %s %s", tt.since, i, ev.ID, ev.Frame, want, f)
			}
		}
	}
	for _, tt := range []struct {
		since        string
		wantComplete bool
	}{
		{"", false},    // from the beginning of time: nothing known, so not known complete
		{ids[0], true}, // a recent id: nothing was published since within the record TTL
		{"1-0", false}, // an id older than any record: events may have come and gone
	} {
		r, err := b.History(ctx, name("never-published"), tt.since)
		if err != nil || len(r.Events) != 0 || r.Complete != tt.wantComplete {
			t.Errorf("History of an unknown channel since %q = %d, %v, %v; want 0, %v, nil", tt.since, len(r.Events), r.Complete, err, tt.wantComplete)
		}
	}
}

// testBaseline checks Last and quiet channels: a channel with no event has
// a baseline before any event to come, and a resume from the last id the
// broker gave, on a channel with nothing new, is complete.
func testBaseline(t *testing.T, start starter) {
	b, rec, name := start(t)
	ctx := context.Background()
	ch := name("quiet")
	MustSubscribe(t, b, ch)
	base := b.Last(ch)
	if _, _, err := events.ParseID(base); err != nil {
		t.Fatalf("Last of a channel without events = %q, want an id", base)
	}
	if r, err := b.History(ctx, ch, base); err != nil || !r.Complete || len(r.Events) != 0 {
		t.Fatalf("History since the baseline = %v, %v; want complete and empty", r, err)
	}
	id := Must(t, b, "", pub(ch, "n", "1"))[0]
	if events.CompareIDs(id, base) <= 0 {
		t.Fatalf("first event %s is not after the baseline %s", id, base)
	}
	rec.WaitID(t, ch, id)
	if got := b.Last(ch); got != id {
		t.Fatalf("Last after an event = %s, want %s", got, id)
	}
	for _, since := range []string{base, id} {
		r, err := b.History(ctx, ch, since)
		if err != nil || !r.Complete {
			t.Fatalf("History since %s = %v, %v; want complete", since, r, err)
		}
	}
	if got := b.Last(name("not-subscribed")); got != "" {
		t.Fatalf("Last of a channel not received = %q, want empty", got)
	}
}

// testOwners checks that an effect's owner is decided at publish time (the
// app's record first, else the user its data names), travels with its
// events and is kept for history reads.
func testOwners(t *testing.T, start starter) {
	b, rec, name := start(t)
	ctx := context.Background()
	effect := strings.TrimPrefix(name("fx"), "public:")
	ch := "effect:" + effect
	MustSubscribe(t, b, ch)
	id := Must(t, b, "", pub(ch, "progress", `{"pct":1}`))[0]
	if f := rec.WaitID(t, ch, id); f[len(f)-1].Owner != "" {
		t.Fatalf("unowned effect event delivered with owner %q", f[len(f)-1].Owner)
	}
	id = Must(t, b, "", pub(ch, events.EffectComplete, `{"userEffectId":"x","userId":"alice"}`))[0]
	if f := rec.WaitID(t, ch, id); f[len(f)-1].Owner != "alice" {
		t.Fatalf("completion naming alice delivered with owner %q", f[len(f)-1].Owner)
	}
	// The first owner stays.
	id = Must(t, b, "", pub(ch, "again", `{"userId":"bob"}`))[0]
	if f := rec.WaitID(t, ch, id); f[len(f)-1].Owner != "alice" {
		t.Fatalf("later event delivered with owner %q, want alice", f[len(f)-1].Owner)
	}
	if r, err := b.History(ctx, ch, ""); err != nil || r.Owner != "alice" {
		t.Fatalf("History owner = %q, %v; want alice", r.Owner, err)
	}
	if o, err := b.Owner(ctx, effect); err != nil || o != "alice" {
		t.Fatalf("Owner = %q, %v; want alice", o, err)
	}

	// The app's record names the owner of events that name none.
	effect2 := strings.TrimPrefix(name("fx2"), "public:")
	ch2 := "effect:" + effect2
	MustSubscribe(t, b, ch2)
	if err := b.SetOwner(ctx, effect2, "carol", time.Minute); err != nil {
		t.Fatal(err)
	}
	if o, err := b.Owner(ctx, effect2); err != nil || o != "carol" {
		t.Fatalf("Owner after SetOwner = %q, %v; want carol", o, err)
	}
	id = Must(t, b, "", pub(ch2, "progress", `{"pct":2}`))[0]
	if f := rec.WaitID(t, ch2, id); f[len(f)-1].Owner != "carol" {
		t.Fatalf("event of an app-owned effect delivered with owner %q, want carol", f[len(f)-1].Owner)
	}
}

type starter func(t *testing.T) (broker.Broker, *Recorder, func(string) string)

// channelNamer returns a function naming channels unique to this test, so
// that tests sharing a backend never see each other's events.
func channelNamer(t *testing.T) func(string) string {
	var b [6]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	return func(name string) string { return "public:bt-" + id + "-" + name }
}

func pub(channel, event string, data string) events.Publication {
	return events.Publication{Channel: channel, Event: event, Data: json.RawMessage(data)}
}

// Must publishes pubs and fails the test on error.
func Must(tb testing.TB, b broker.Broker, idemKey string, pubs ...events.Publication) []string {
	tb.Helper()
	ids, err := b.Publish(context.Background(), idemKey, pubs...)
	if err != nil {
		tb.Fatalf("Publish: %v", err)
	}
	if len(ids) != len(pubs) {
		tb.Fatalf("Publish returned %d ids for %d publications", len(ids), len(pubs))
	}
	return ids
}

// MustSubscribe subscribes and fails the test on error.
func MustSubscribe(tb testing.TB, b broker.Broker, channels ...string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), WaitTimeout)
	defer cancel()
	if err := b.Subscribe(ctx, channels...); err != nil {
		tb.Fatalf("Subscribe: %v", err)
	}
}

// mark publishes a marker on the subscribed channel marker, and on a
// marker of each partition (events.Partition) of channels that marker's is
// not, and waits for them: frames of channels published before them have
// then arrived, or never will. (A broker on a Redis Cluster receives each
// partition on its own connection: only a marker of the same partition
// proves that a frame is not merely late.) It returns the frames received,
// without those of the extra markers.
func mark(t *testing.T, b broker.Broker, rec *Recorder, marker string, channels ...string) []Frame {
	t.Helper()
	markers := []string{marker}
	parts := map[int]bool{events.Partition(marker): true}
	for _, c := range channels {
		if p := events.Partition(c); !parts[p] {
			parts[p] = true
			m := inPartition(marker, p)
			MustSubscribe(t, b, m)
			markers = append(markers, m)
		}
	}
	for _, m := range markers {
		id := Must(t, b, "", pub(m, "marker", `{}`))[0]
		rec.WaitID(t, m, id)
	}
	var out []Frame
	for _, f := range rec.Frames() {
		if !slices.Contains(markers[1:], f.Channel) {
			out = append(out, f)
		}
	}
	return out
}

// inPartition returns a channel name made from base that falls in
// partition p.
func inPartition(base string, p int) string {
	for i := 0; ; i++ {
		if c := base + "-p" + strconv.Itoa(i); events.Partition(c) == p {
			return c
		}
	}
}

func count(fs []Frame, channel string) int {
	n := 0
	for _, f := range fs {
		if f.Channel == channel {
			n++
		}
	}
	return n
}

func testDelivery(t *testing.T, start starter) {
	b, rec, ch := start(t)
	if err := b.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	a := ch("a")
	MustSubscribe(t, b, a)
	pubs := []events.Publication{
		pub(a, "effect.complete", `{"resultUrl":"https://x/y.png","n":[1,2.5,"é"]}`),
		pub(a, "no.data", ``),
	}
	for _, p := range pubs {
		id := Must(t, b, "", p)[0]
		fs := rec.WaitID(t, a, id)
		got := fs[len(fs)-1]
		if got.ID != id {
			t.Fatalf("last frame id %q, want %q", got.ID, id)
		}
		if want := events.AppendFrame(nil, id, p); string(got.Bytes) != string(want) {
			t.Errorf("frame\n got %s\nwant %s", got.Bytes, want)
		}
	}
	if fs := rec.Frames(); len(fs) != 2 {
		t.Errorf("got %d frames, want 2", len(fs))
	}
}

func testUnsubscribed(t *testing.T, start starter) {
	b, rec, ch := start(t)
	marker, never, left := ch("marker"), ch("never"), ch("left")
	MustSubscribe(t, b, marker, left)
	b.Unsubscribe(left)
	Must(t, b, "", pub(never, "e", `1`))
	Must(t, b, "", pub(left, "e", `2`))
	fs := mark(t, b, rec, marker, never, left)
	if n := count(fs, never) + count(fs, left); n != 0 {
		t.Errorf("got %d frame(s) of unsubscribed channels, want 0", n)
	}
	b.Unsubscribe(left) // dropping a reference never added is ignored
	MustSubscribe(t, b, left)
	id := Must(t, b, "", pub(left, "e", `3`))[0]
	rec.WaitID(t, left, id)
}

func testRefCounts(t *testing.T, start starter) {
	b, rec, ch := start(t)
	marker, x := ch("marker"), ch("x")
	MustSubscribe(t, b, marker)
	MustSubscribe(t, b, x)
	MustSubscribe(t, b, x)
	b.Unsubscribe(x)
	id := Must(t, b, "", pub(x, "e", `1`))[0]
	rec.WaitID(t, x, id)
	b.Unsubscribe(x)
	Must(t, b, "", pub(x, "e", `2`))
	if n := count(mark(t, b, rec, marker, x), x); n != 1 {
		t.Errorf("got %d frames on x, want 1 (the one before the last unsubscribe)", n)
	}
}

func testOrderedIDs(t *testing.T, start starter) {
	b, rec, ch := start(t)
	a := ch("a")
	MustSubscribe(t, b, a)
	const publishers, each = 4, 250
	var mu sync.Mutex
	var all []string
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			var mine []string
			for i := range each {
				ids, err := b.Publish(context.Background(), "", pub(a, "e", fmt.Sprintf(`[%d,%d]`, p, i)))
				if err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
				if len(mine) > 0 && events.CompareIDs(ids[0], mine[len(mine)-1]) <= 0 {
					t.Errorf("id %s after %s from the same publisher", ids[0], mine[len(mine)-1])
				}
				mine = append(mine, ids[0])
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	fs := rec.WaitFor(t, fmt.Sprintf("%d frames", len(all)), func(fs []Frame) bool { return len(fs) >= len(all) })
	var got []string
	for i, f := range fs {
		if i > 0 && events.CompareIDs(f.ID, fs[i-1].ID) <= 0 {
			t.Fatalf("frame %d has id %s after %s: not strictly increasing", i, f.ID, fs[i-1].ID)
		}
		got = append(got, f.ID)
	}
	slices.SortFunc(all, events.CompareIDs)
	if !slices.Equal(got, all) {
		t.Errorf("delivered ids differ from published ids (%d delivered, %d published)", len(got), len(all))
	}
}

func testBatch(t *testing.T, start starter) {
	b, rec, ch := start(t)
	x, y, z := ch("x"), ch("y"), ch("z")
	MustSubscribe(t, b, x, y, z)
	pubs := []events.Publication{pub(x, "e", `1`), pub(y, "e", `2`), pub(x, "e", `3`), pub(z, "e", `4`)}
	ids := Must(t, b, "", pubs...)
	if events.CompareIDs(ids[2], ids[0]) <= 0 {
		t.Errorf("second id on x %s not after first %s", ids[2], ids[0])
	}
	// Order is promised per channel: a broker on a Redis Cluster receives
	// channels of different slots on different connections.
	rec.WaitID(t, x, ids[2])
	rec.WaitID(t, y, ids[1])
	rec.WaitID(t, z, ids[3])
	for _, c := range []string{x, y, z} {
		var want []string
		for i, p := range pubs {
			if p.Channel == c {
				want = append(want, string(events.AppendFrame(nil, ids[i], p)))
			}
		}
		var got []string
		for _, f := range rec.On(c) {
			got = append(got, string(f.Bytes))
		}
		if !slices.Equal(got, want) {
			t.Errorf("frames on %s: %q, want %q in publish order", c, got, want)
		}
	}

	// A batch with one bad publication publishes nothing.
	_, err := b.Publish(context.Background(), "", pub(x, "e", `5`), pub(y, "bad event", `6`))
	var fe *events.FieldError
	if !errors.As(err, &fe) || fe.Field != "event" {
		t.Fatalf("bad batch: got %v, want a *events.FieldError on event", err)
	}
	if n := count(mark(t, b, rec, z, x, y), x); n != 2 {
		t.Errorf("got %d frames on x, want 2: the bad batch published something", n)
	}
}

func testIdempotency(t *testing.T, start starter) {
	b, rec, ch := start(t)
	x, y, marker := ch("x"), ch("y"), ch("marker")
	MustSubscribe(t, b, x, y, marker)
	key := "bt-" + ch("key")
	pubs := []events.Publication{pub(x, "e", `1`), pub(y, "e", `2`)}
	first := Must(t, b, key, pubs...)
	again := Must(t, b, key, pubs...)
	if !slices.Equal(first, again) {
		t.Errorf("repeat returned %v, want %v", again, first)
	}
	other := Must(t, b, key+"-other", pubs[0])
	if other[0] == first[0] {
		t.Errorf("another key returned the same id %s", other[0])
	}
	// The same key for other channels or events is a mistake, not a retry:
	// refused. Other data is a retry (a re-run job's new timestamp).
	if ids, err := b.Publish(context.Background(), key, pub(x, "e", `1`), pub(y, "e", `3`)); err != nil || !slices.Equal(ids, first) {
		t.Errorf("same key, same channels, other data: %v, %v; want the first ids", ids, err)
	}
	for _, changed := range [][]events.Publication{{pubs[0]}, {pub(x, "e", `1`), pub(y, "other", `2`)}} {
		if ids, err := b.Publish(context.Background(), key, changed...); !errors.Is(err, events.ErrIdempotencyConflict) {
			t.Errorf("same key, other content: %v, %v; want ErrIdempotencyConflict", ids, err)
		}
	}
	fs := mark(t, b, rec, marker, x, y)
	if nx, ny := count(fs, x), count(fs, y); nx != 2 || ny != 1 {
		t.Errorf("got %d frames on x and %d on y, want 2 and 1", nx, ny)
	}
}

func testValidation(t *testing.T, start starter) {
	b, _, ch := start(t)
	ok := ch("ok")
	for _, tc := range []struct {
		name  string
		p     events.Publication
		field string
	}{
		{"bad channel chars", pub("public:a b", "e", `1`), "channel"},
		{"unknown kind", pub("nope:x", "e", `1`), "channel"},
		{"empty id", pub("user:", "e", `1`), "channel"},
		{"classic ingress", pub(events.ClassicChannel, "e", `1`), "channel"},
		{"long channel", pub("public:"+strings.Repeat("a", 130), "e", `1`), "channel"},
		{"empty event", pub(ok, "", `1`), "event"},
		{"bad event", pub(ok, "e\"", `1`), "event"},
		{"bad data", pub(ok, "e", `{"a":`), "data"},
	} {
		_, err := b.Publish(context.Background(), "", tc.p)
		var fe *events.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: got %v, want a *events.FieldError on %s", tc.name, err, tc.field)
		}
	}
	if _, err := b.Publish(context.Background(), ""); err == nil {
		t.Error("Publish of nothing: got nil error")
	}
	err := b.Subscribe(context.Background(), ok, "bad channel")
	var fe *events.FieldError
	if !errors.As(err, &fe) || fe.Field != "channel" {
		t.Errorf("Subscribe of a bad name: got %v, want a *events.FieldError on channel", err)
	}
}

func testSubscribeCancelled(t *testing.T, start starter) {
	b, rec, ch := start(t)
	x, marker := ch("x"), ch("marker")
	MustSubscribe(t, b, marker)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Subscribe(ctx, x); !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe with a cancelled context: got %v, want context.Canceled", err)
	}
	Must(t, b, "", pub(x, "e", `1`))
	if n := count(mark(t, b, rec, marker, x), x); n != 0 {
		t.Errorf("got %d frames on x: a failed Subscribe kept its reference", n)
	}
}

// testResubscribeInFlight subscribes, abandons and resubscribes a channel
// in quick succession, so that a broker's SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE
// of it may be in flight together: the last Subscribe must not return on
// the first SUBSCRIBE's confirmation.
func testResubscribeInFlight(t *testing.T, start starter) {
	b, rec, ch := start(t)
	x := ch("x")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 100 {
		b.Subscribe(cancelled, x) // may add and drop its reference, or fail at once
		MustSubscribe(t, b, x)
		id := Must(t, b, "", pub(x, "e", fmt.Sprint(i)))[0]
		rec.WaitID(t, x, id)
		b.Unsubscribe(x)
	}
}

func testChurn(t *testing.T, start starter) {
	b, rec, ch := start(t)
	chans := []string{ch("c0"), ch("c1"), ch("c2"), ch("c3")}
	marker := ch("marker")
	MustSubscribe(t, b, marker)
	const workers, steps = 50, 40
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			held := make([]int, len(chans))
			for range steps {
				i := randN(len(chans))
				if held[i] > 0 && randN(2) == 0 {
					b.Unsubscribe(chans[i])
					held[i]--
					continue
				}
				if err := b.Subscribe(context.Background(), chans[i]); err != nil {
					t.Errorf("Subscribe: %v", err)
					return
				}
				held[i]++
			}
			// End state: worker 0 holds c0 once, worker 1 holds c1 once;
			// c2 and c3 end with no reference.
			for i := range chans {
				want := 0
				if i == w && i < 2 {
					want = 1
				}
				for ; held[i] < want; held[i]++ {
					if err := b.Subscribe(context.Background(), chans[i]); err != nil {
						t.Errorf("Subscribe: %v", err)
						return
					}
				}
				for ; held[i] > want; held[i]-- {
					b.Unsubscribe(chans[i])
				}
			}
		})
	}
	wg.Wait()
	// Twice, so that a late UNSUBSCRIBE or SUBSCRIBE would show.
	for round := range 2 {
		var ids []string
		for _, c := range chans {
			ids = append(ids, Must(t, b, "", pub(c, "e", fmt.Sprint(round)))[0])
		}
		fs := mark(t, b, rec, marker, chans...)
		for i, c := range chans {
			want := 0
			if i < 2 {
				want = 1
			}
			got := 0
			for _, f := range fs {
				if f.Channel == c && f.ID == ids[i] {
					got++
				}
			}
			if got != want {
				t.Errorf("round %d: %d frames of %s, want %d", round, got, c, want)
			}
		}
	}
}

func testManyChannels(t *testing.T, start starter) {
	b, rec, ch := start(t)
	const n = 500
	chans := make([]string, n)
	pubs := make([]events.Publication, n)
	for i := range chans {
		chans[i] = ch(fmt.Sprint("m", i))
		pubs[i] = pub(chans[i], "e", fmt.Sprint(i))
	}
	marker := ch("marker")
	MustSubscribe(t, b, append(chans, marker)...)
	ids := Must(t, b, "", pubs...)
	rec.WaitFor(t, fmt.Sprintf("%d frames", n), func(fs []Frame) bool { return len(fs) >= n })
	for i, c := range chans {
		if fs := rec.On(c); len(fs) != 1 || fs[0].ID != ids[i] {
			t.Fatalf("channel %d: got %d frames, want the one with id %s", i, len(fs), ids[i])
		}
	}
	b.Unsubscribe(chans...)
	Must(t, b, "", pubs...)
	if got := len(mark(t, b, rec, marker, chans...)); got != n+1 {
		t.Errorf("got %d frames, want %d: unsubscribed channels delivered", got, n+1)
	}
}

func testClose(t *testing.T, newBroker func(t *testing.T, h broker.Handler) broker.Broker) {
	ignore := goleak.IgnoreCurrent()
	rec := NewRecorder()
	b := newBroker(t, rec.Handle)
	x := channelNamer(t)("x")
	MustSubscribe(t, b, x)
	id := Must(t, b, "", pub(x, "e", `1`))[0]
	rec.WaitID(t, x, id)

	ctx := context.Background()
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := b.Publish(ctx, "", pub(x, "e", `2`)); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close: got %v, want ErrClosed", err)
	}
	if err := b.Subscribe(ctx, x); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe after Close: got %v, want ErrClosed", err)
	}
	if err := b.Ping(ctx); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Ping after Close: got %v, want ErrClosed", err)
	}
	b.Unsubscribe(x) // must not panic or block
	goleak.VerifyNone(t, ignore)
}

func randN(n int) int { return mrand.IntN(n) }
