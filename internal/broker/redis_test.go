package broker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/broker/brokertest"
	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/redistest"
)

// names puts the tests' keys under a prefix, as an operator may.
var names = events.Names{Prefix: "t:"}

func newRedis(t *testing.T, rdb redis.UniversalClient, h broker.Handler, opts broker.RedisOptions) *broker.Redis {
	t.Helper()
	b := broker.NewRedis(rdb, events.NewRedisLog(rdb, names, events.LogConfig{}), names, h, testLogger(t), opts)
	t.Cleanup(func() { b.Close() })
	return b
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestRedisConformance(t *testing.T) {
	rdb := redistest.Start(t).Client()
	brokertest.Run(t, func(t *testing.T, h broker.Handler) broker.Broker {
		return newRedis(t, rdb, h, broker.RedisOptions{})
	})
}

// eventually polls cond until it holds, failing the test after a while.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(brokertest.WaitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRedisClassicIngressOncePerChannel(t *testing.T) {
	srv := redistest.Start(t)
	effect := uuid.NewString()
	userCh, effectCh := events.UserChannel("42"), events.EffectChannel(effect)
	marker := "public:marker-" + effect

	var brokers []*broker.Redis
	var recs []*brokertest.Recorder
	for range 3 {
		rec := brokertest.NewRecorder()
		b := newRedis(t, srv.Client(), rec.Handle, broker.RedisOptions{Classic: true})
		brokertest.MustSubscribe(t, b, userCh, effectCh, marker)
		brokers, recs = append(brokers, b), append(recs, rec)
	}

	app := srv.Client()
	ctx := context.Background()
	for _, bad := range []string{`not json`, `{"resultUrl":"https://x/y.png"}`, `{"userEffectId":"a b"}`, `{"userEffectId":"x","userId":[42]}`} {
		if err := app.Publish(ctx, events.ClassicChannel, bad).Err(); err != nil {
			t.Fatalf("PUBLISH: %v", err)
		}
	}
	payload := fmt.Sprintf(`{"userEffectId":%q,"resultUrl":"https://x/y.png","timestamp":1732600000000,"userId":"42"}`, effect)
	if n, err := app.Publish(ctx, events.ClassicChannel, payload).Result(); err != nil || n != 3 {
		t.Fatalf("PUBLISH effect:complete = %d, %v; want 3 receivers", n, err)
	}

	var ids []string
	for i, rec := range recs {
		fs := rec.WaitFor(t, "the classic event on both channels", func(fs []brokertest.Frame) bool {
			return len(fs) >= 2
		})
		for _, f := range fs {
			if f.Event != events.EffectComplete || string(f.Data) != payload {
				t.Errorf("broker %d: frame %s, want event %s with the classic JSON as data", i, f.Bytes, events.EffectComplete)
			}
		}
		ids = append(ids, fs[0].ID, fs[1].ID)
	}
	// Every replica converted (or found converted) the message and counted
	// the bad ones; a marker published after that comes after any
	// duplicate a conversion could have published.
	for i, b := range brokers {
		eventually(t, fmt.Sprintf("broker %d to convert the classic messages", i), func() bool {
			s := b.Stats()
			return s.ClassicConverted == 1 && s.ClassicInvalid == 4
		})
	}
	id := brokertest.Must(t, brokers[0], "", events.Publication{Channel: marker, Event: "m"})[0]
	for i, rec := range recs {
		rec.WaitID(t, marker, id)
		if nu, ne := len(rec.On(userCh)), len(rec.On(effectCh)); nu != 1 || ne != 1 {
			t.Errorf("broker %d: %d frames on %s and %d on %s, want 1 and 1", i, nu, userCh, ne, effectCh)
		}
		if got := []string{rec.On(userCh)[0].ID, rec.On(effectCh)[0].ID}; !slices.Equal(got, []string{ids[0], ids[1]}) && !slices.Equal(got, []string{ids[1], ids[0]}) {
			t.Errorf("broker %d got ids %v, broker 0 got %v", i, got, ids[:2])
		}
	}
	for _, ch := range []string{userCh, effectCh} {
		if n, err := app.LLen(ctx, names.History(ch)).Result(); err != nil || n != 1 {
			t.Errorf("history of %s has %d entries (%v), want 1", ch, n, err)
		}
	}
}

// resubscribed records OnResubscribe calls.
type resubscribed struct {
	mu       sync.Mutex
	channels []string
}

func (r *resubscribed) add(chs []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.channels = append(r.channels, chs...)
}

func (r *resubscribed) count(ch string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.channels {
		if c == ch {
			n++
		}
	}
	return n
}

// waitDelivery publishes markers on ch until one is delivered: after a
// reconnect, what is published before the resubscription is lost.
func waitDelivery(t *testing.T, b broker.Broker, rec *brokertest.Recorder, ch string) {
	t.Helper()
	deadline := time.Now().Add(brokertest.WaitTimeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		ids, err := b.Publish(ctx, "", events.Publication{Channel: ch, Event: "m"})
		cancel()
		if err != nil {
			continue // Redis not back yet; Publish's dial failure paces the loop
		}
		if rec.Try(200*time.Millisecond, func(fs []brokertest.Frame) bool {
			return slices.ContainsFunc(fs, func(f brokertest.Frame) bool { return f.ID == ids[0] && f.Channel == ch })
		}) {
			return
		}
	}
	t.Fatalf("no delivery on %s within %v", ch, brokertest.WaitTimeout)
}

func TestRedisReconnect(t *testing.T) {
	srv := redistest.Start(t)
	rec, resub := brokertest.NewRecorder(), &resubscribed{}
	b := newRedis(t, srv.Client(), rec.Handle, broker.RedisOptions{OnResubscribe: resub.add})
	ch := "user:reconnect"
	brokertest.MustSubscribe(t, b, ch)
	waitDelivery(t, b, rec, ch)

	admin := srv.Client()
	if n, err := admin.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Result(); err != nil || n < 1 {
		t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v", n, err)
	}
	waitDelivery(t, b, rec, ch)
	eventually(t, "OnResubscribe after CLIENT KILL", func() bool { return resub.count(ch) == 1 })

	srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := b.Ping(ctx); err == nil {
		t.Error("Ping with Redis down: got nil")
	}
	srv.Restart()
	waitDelivery(t, b, rec, ch)
	eventually(t, "OnResubscribe after a restart", func() bool { return resub.count(ch) == 2 })
	if s := b.Stats(); s.Resubscribes < 2 || s.Channels != 1 {
		t.Errorf("Stats = %+v, want ≥ 2 resubscribes and 1 channel", s)
	}
}

func TestRedisSubscribeWhileDown(t *testing.T) {
	srv := redistest.Start(t)
	rec := brokertest.NewRecorder()
	b := newRedis(t, srv.Client(), rec.Handle, broker.RedisOptions{})
	srv.Kill()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := b.Subscribe(ctx, "user:a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Subscribe with Redis down: got %v, want DeadlineExceeded", err)
	}
	if n := b.Stats().Channels; n != 0 {
		t.Errorf("failed Subscribe left %d channel(s) referenced", n)
	}

	// A Subscribe waiting for Redis completes once it is back.
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), brokertest.WaitTimeout)
		defer cancel()
		errc <- b.Subscribe(ctx, "user:b")
	}()
	srv.Restart()
	if err := <-errc; err != nil {
		t.Fatalf("Subscribe across a restart: %v", err)
	}
	id := brokertest.Must(t, b, "", events.Publication{Channel: "user:b", Event: "e"})[0]
	rec.WaitID(t, "user:b", id)

	// A Subscribe waiting for a dead Redis returns at Close.
	srv.Kill()
	go func() { errc <- b.Subscribe(context.Background(), "user:c") }()
	b.Close()
	if err := <-errc; !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe during Close: got %v, want ErrClosed", err)
	}
}

// TestRedisChurnLeavesRedisInStep checks the Redis side of the reference
// counts: after concurrent churn, Redis has exactly the channels with
// references subscribed.
func TestRedisChurnLeavesRedisInStep(t *testing.T) {
	srv := redistest.Start(t)
	b := newRedis(t, srv.Client(), func(string, string, string, []byte) {}, broker.RedisOptions{})
	chans := []string{"public:s0", "public:s1", "public:s2"}
	var wg sync.WaitGroup
	for w := range 50 {
		wg.Go(func() {
			for i := range 30 {
				ch := chans[(w+i)%len(chans)]
				if err := b.Subscribe(context.Background(), ch); err != nil {
					t.Errorf("Subscribe: %v", err)
					return
				}
				if i%2 == 0 || w%len(chans) != 0 {
					b.Unsubscribe(ch) // workers 0, 3, 6… keep every odd step's reference
				}
			}
		})
	}
	wg.Wait()
	if n := b.Stats().Channels; n != len(chans) {
		t.Fatalf("Stats().Channels = %d, want %d", n, len(chans))
	}
	admin := srv.Client()
	numsub := func() map[string]int64 {
		var ps []string
		for _, c := range chans {
			ps = append(ps, names.PubSub(c))
		}
		m, err := admin.PubSubNumSub(context.Background(), ps...).Result()
		if err != nil {
			t.Fatalf("PUBSUB NUMSUB: %v", err)
		}
		return m
	}
	for _, c := range chans {
		if got := numsub()[names.PubSub(c)]; got != 1 {
			t.Errorf("%s has %d Redis subscriber(s), want 1", c, got)
		}
	}
	// Drop every reference: Redis follows, in the background.
	for w := range 50 {
		if w%len(chans) != 0 {
			continue
		}
		for i := 1; i < 30; i += 2 {
			b.Unsubscribe(chans[(w+i)%len(chans)])
		}
	}
	eventually(t, "Redis to drop all subscriptions", func() bool {
		for _, n := range numsub() {
			if n != 0 {
				return false
			}
		}
		return true
	})
	if n := b.Stats().Channels; n != 0 {
		t.Errorf("Stats().Channels = %d, want 0", n)
	}
}

// The frames the script publishes and AppendFrame builds must be byte-equal
// for data with escapes and unicode too (the conformance suite compares
// them for the Redis broker; this checks odd data directly).
func TestRedisFrameMatchesAppendFrame(t *testing.T) {
	srv := redistest.Start(t)
	rec := brokertest.NewRecorder()
	b := newRedis(t, srv.Client(), rec.Handle, broker.RedisOptions{})
	brokertest.MustSubscribe(t, b, "public:odd")
	for _, data := range []string{`"a\"b\\c\u0000"`, `{"x" : [ 1 , 2 ] }`, `"日本語 ✓"`, `null`, `-1.5e10`} {
		p := events.Publication{Channel: "public:odd", Event: "e", Data: json.RawMessage(data)}
		id := brokertest.Must(t, b, "", p)[0]
		fs := rec.WaitID(t, "public:odd", id)
		if got, want := string(fs[len(fs)-1].Bytes), string(events.AppendFrame(nil, id, p)); got != want {
			t.Errorf("frame\n got %s\nwant %s", got, want)
		}
	}
}

// TestRedisStaleConfirmationKeepsSubscribeWaiting puts SUBSCRIBE x,
// UNSUBSCRIBE x, SUBSCRIBE x on the wire together and holds the delivery
// loop between the first round's confirmations and the rest: the second
// Subscribe must not return on the first SUBSCRIBE's confirmation, since
// x is unsubscribed again right after it.
func TestRedisStaleConfirmationKeepsSubscribeWaiting(t *testing.T) {
	srv := redistest.Start(t)
	marker, x := "public:marker", "public:x"
	entered, release, stop := make(chan struct{}), make(chan struct{}), make(chan struct{})
	h := func(ch, _, _ string, _ []byte) {
		if ch != marker {
			return
		}
		// Stall the delivery loop, which the Handler contract forbids, to
		// keep later confirmations queued behind this frame.
		select {
		case entered <- struct{}{}:
		case <-stop:
			return
		}
		select {
		case <-release:
		case <-stop:
		}
	}
	b := newRedis(t, srv.Client(), h, broker.RedisOptions{})
	t.Cleanup(func() { close(stop) }) // runs before b.Close
	brokertest.MustSubscribe(t, b, marker)
	admin := srv.Client()
	ctx := context.Background()
	numsub := func(want int64) func() bool {
		return func() bool { return admin.PubSubNumSub(ctx, names.PubSub(x)).Val()[names.PubSub(x)] == want }
	}

	brokertest.Must(t, b, "", events.Publication{Channel: marker, Event: "m1"})
	<-entered // the loop now holds every later message

	first, cancelFirst := context.WithCancel(ctx)
	firstErr := make(chan error, 1)
	go func() { firstErr <- b.Subscribe(first, x) }()
	eventually(t, "the first SUBSCRIBE to reach Redis", numsub(1))
	brokertest.Must(t, b, "", events.Publication{Channel: marker, Event: "m2"}) // queued after its confirmations
	cancelFirst()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("first Subscribe: got %v, want context.Canceled", err)
	}
	eventually(t, "the UNSUBSCRIBE to reach Redis", numsub(0))
	secondErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, brokertest.WaitTimeout)
		defer cancel()
		secondErr <- b.Subscribe(ctx, x)
	}()
	eventually(t, "the second SUBSCRIBE to reach Redis", numsub(1))

	release <- struct{}{} // the loop reads the first round's confirmations…
	<-entered             // …and stops at m2, before the later ones
	select {
	case err := <-secondErr:
		t.Fatalf("second Subscribe returned (%v) on a stale confirmation", err)
	case <-time.After(100 * time.Millisecond): // a failure shows at once; a pass costs this wait
	}
	release <- struct{}{}
	if err := <-secondErr; err != nil {
		t.Fatalf("second Subscribe: %v", err)
	}
}

// TestRedisRefillAfterReconnects kills the pub/sub connection three times
// while 1000 events are published: the Handler still gets every one of
// them exactly once, in order, refilled from history after each reconnect.
func TestRedisRefillAfterReconnects(t *testing.T) {
	srv := redistest.Start(t)
	rec := brokertest.NewRecorder()
	b := newRedis(t, srv.Client(), rec.Handle, broker.RedisOptions{})
	ch := "user:refill"
	brokertest.MustSubscribe(t, b, ch)

	pubLog := events.NewRedisLog(srv.Client(), names, events.LogConfig{HistorySize: 2000, HistoryTTL: time.Minute})
	admin := srv.Client()
	const total = 1000
	var ids []string
	for i := range total {
		got, err := pubLog.Append(context.Background(), "", events.Publication{Channel: ch, Event: "n", Data: []byte(strconv.Itoa(i))})
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		ids = append(ids, got[0])
		if i%250 == 125 {
			if n, err := admin.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Result(); err != nil || n < 1 {
				t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v", n, err)
			}
		}
	}
	fs := rec.WaitFor(t, "all events", func(fs []brokertest.Frame) bool { return len(fs) >= total })
	var got []string
	for _, f := range fs {
		got = append(got, f.ID)
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("delivered %d ids, want the %d published in order (first difference at %d)", len(got), total, firstDiff(got, ids))
	}
	if s := b.Stats(); s.Resubscribes < 3 || s.Refilled == 0 {
		t.Errorf("Stats = %+v, want ≥ 3 resubscribes and some refilled frames", s)
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// freezeProxy forwards TCP to Redis and can make the pub/sub connections
// open at a given moment stop receiving without breaking: what a stuck
// middlebox or a subscription left on an old master looks like.
type freezeProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []*proxyConn
}

type proxyConn struct {
	pubsub, frozen atomic.Bool
}

func startFreezeProxy(t *testing.T, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			pc := &proxyConn{}
			p.mu.Lock()
			p.conns = append(p.conns, pc)
			p.mu.Unlock()
			t.Cleanup(func() { c.Close(); s.Close() })
			go func() { // client → Redis: spot pub/sub connections
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if bytes.Contains(bytes.ToLower(buf[:n]), []byte("subscribe")) {
							pc.pubsub.Store(true)
						}
						s.Write(buf[:n])
					}
					if err != nil {
						s.Close()
						return
					}
				}
			}()
			go func() { // Redis → client: a frozen connection swallows everything
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 && !pc.frozen.Load() {
						c.Write(buf[:n])
					}
					if err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	return p
}

// freezePubSub freezes the pub/sub connections open now and returns how many.
func (p *freezeProxy) freezePubSub() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.conns {
		if c.pubsub.Load() {
			c.frozen.Store(true)
			n++
		}
	}
	return n
}

// TestRedisProbeReplacesASilentConnection: the pub/sub connection stops
// receiving without breaking; the probe notices, the broker replaces the
// connection, and every event, those published meanwhile included, is
// delivered once, in order.
func TestRedisProbeReplacesASilentConnection(t *testing.T) {
	srv := redistest.Start(t)
	proxy := startFreezeProxy(t, srv.Addr)
	viaProxy := redis.NewClient(&redis.Options{Addr: proxy.ln.Addr().String()})
	t.Cleanup(func() { viaProxy.Close() })
	rec := brokertest.NewRecorder()
	b := newRedis(t, viaProxy, rec.Handle, broker.RedisOptions{ProbeInterval: 50 * time.Millisecond, ProbeTimeout: 200 * time.Millisecond})
	ch := "user:silent"
	brokertest.MustSubscribe(t, b, ch)

	pubLog := events.NewRedisLog(srv.Client(), names, events.LogConfig{HistorySize: 1000, HistoryTTL: time.Minute})
	var ids []string
	for i := range 300 {
		if i == 100 {
			if n := proxy.freezePubSub(); n == 0 {
				t.Fatal("no pub/sub connection to freeze")
			}
		}
		got, err := pubLog.Append(context.Background(), "", events.Publication{Channel: ch, Event: "n", Data: []byte(strconv.Itoa(i))})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got[0])
		time.Sleep(2 * time.Millisecond) // a stream spread over the outage, not a sync point
	}
	fs := rec.WaitFor(t, "all events", func(fs []brokertest.Frame) bool { return len(fs) >= len(ids) })
	var got []string
	for _, f := range fs {
		got = append(got, f.ID)
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("delivered %d ids, want the %d published in order (first difference at %d)", len(got), len(ids), firstDiff(got, ids))
	}
	if s := b.Stats(); s.Replacements == 0 {
		t.Errorf("Stats = %+v, want a replaced connection", s)
	}
}

// TestRedisRefillGapIsReported: events published while the pub/sub
// connection was silent left the (small) history window before the refill
// could read them; the broker says so through OnGap, once, before it
// delivers what history still holds and the live events after it.
func TestRedisRefillGapIsReported(t *testing.T) {
	srv := redistest.Start(t)
	proxy := startFreezeProxy(t, srv.Addr)
	viaProxy := redis.NewClient(&redis.Options{Addr: proxy.ln.Addr().String()})
	t.Cleanup(func() { viaProxy.Close() })
	rec := brokertest.NewRecorder()
	gaps := make(chan string, 4)
	logCfg := events.LogConfig{HistorySize: 3, HistoryTTL: time.Minute}
	b := broker.NewRedis(viaProxy, events.NewRedisLog(viaProxy, names, logCfg), names, rec.Handle, nil, broker.RedisOptions{
		ProbeInterval: 50 * time.Millisecond, ProbeTimeout: 200 * time.Millisecond,
		OnGap: func(ch string) { gaps <- ch },
	})
	t.Cleanup(func() { b.Close() })
	ch := "user:gap"
	brokertest.MustSubscribe(t, b, ch)
	pubLog := events.NewRedisLog(srv.Client(), names, logCfg)
	publish := func(i int) string {
		ids, err := pubLog.Append(context.Background(), "", events.Publication{Channel: ch, Event: "n", Data: []byte(strconv.Itoa(i))})
		if err != nil {
			t.Fatal(err)
		}
		return ids[0]
	}
	first := publish(0)
	rec.WaitID(t, ch, first)
	if n := proxy.freezePubSub(); n == 0 {
		t.Fatal("no pub/sub connection to freeze")
	}
	var ids []string
	for i := range 10 { // more than the history holds
		ids = append(ids, publish(i+1))
	}
	select {
	case got := <-gaps:
		if got != ch {
			t.Fatalf("gap reported on %q, want %q", got, ch)
		}
	case <-time.After(brokertest.WaitTimeout):
		t.Fatal("no gap reported")
	}
	last := publish(99)
	fs := rec.WaitID(t, ch, last)
	var got []string
	for _, f := range fs {
		got = append(got, f.ID)
	}
	want := append([]string{first}, ids[len(ids)-3:]...) // what history still held
	want = append(want, last)
	if !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	if s := b.Stats(); s.RefillGaps != 1 {
		t.Errorf("Stats.RefillGaps = %d, want 1", s.RefillGaps)
	}
	select {
	case g := <-gaps:
		t.Errorf("a second gap reported on %s", g)
	default:
	}
}
