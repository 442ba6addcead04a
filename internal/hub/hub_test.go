package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/events"
)

// pipe is an in-process Transport: frames land in a channel; a closed gate
// makes writes block until it opens (a stalled client).
type pipe struct {
	frames chan []byte
	gate   chan struct{}
	writes atomic.Int64 // Write calls

	mu     sync.Mutex
	code   int // close code, once closed
	closed chan struct{}
	once   sync.Once
}

func newPipe(buf int) *pipe {
	g := make(chan struct{})
	close(g)
	return &pipe{frames: make(chan []byte, buf), gate: g, closed: make(chan struct{})}
}

func (p *pipe) Write(deadline time.Time, frames [][]byte) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	p.writes.Add(1)
	for _, f := range frames {
		if err := p.write(ctx, f); err != nil {
			return err
		}
	}
	return nil
}

func (p *pipe) write(ctx context.Context, b []byte) error {
	p.mu.Lock()
	gate := p.gate
	p.mu.Unlock()
	select {
	case <-gate:
	case <-ctx.Done():
		return ctx.Err()
	case <-p.closed:
		return io.ErrClosedPipe
	}
	select {
	case p.frames <- b:
		return nil
	case <-p.closed:
		return io.ErrClosedPipe
	}
}

func (p *pipe) Ping(ctx context.Context) error { return p.write(ctx, nil) }

func (p *pipe) Close(code int, _ string) error {
	p.once.Do(func() {
		p.mu.Lock()
		p.code = code
		p.mu.Unlock()
		close(p.closed)
	})
	return nil
}

func (p *pipe) CloseNow() error { return p.Close(1006, "") }

func (p *pipe) stall() {
	p.mu.Lock()
	p.gate = make(chan struct{})
	p.mu.Unlock()
}

func (p *pipe) closeCode(t *testing.T) int {
	t.Helper()
	select {
	case <-p.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("connection not closed")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.code
}

func (p *pipe) next(t *testing.T) []byte {
	t.Helper()
	select {
	case b := <-p.frames:
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("no frame")
		return nil
	}
}

// newHub returns a hub whose source is a real in-memory broker delivering
// into it.
func newHub(t *testing.T, cfg Config) (*Hub, *broker.Memory) {
	t.Helper()
	var h *Hub
	b := broker.NewMemory(func(ch, id, owner string, f []byte) { h.Broadcast(ch, id, owner, f) }, broker.MemoryConfig{})
	h = New(cfg, b, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(h.Close)
	return h, b
}

// reply is a Join reply that names what Join learned.
func reply(j Joined) []byte {
	return fmt.Appendf(nil, "reply already=%v resumed=%v recovered=%v", j.Already, j.Resumed, j.Recovered)
}

func add(t *testing.T, h *Hub, user string, p *pipe, channels ...string) *Conn {
	t.Helper()
	c, err := h.Add(fmt.Sprintf("c%p", p), user, "", p)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range channels {
		if err := h.Join(context.Background(), c, ch, "", func(Joined) []byte { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// future returns the i-th of ids after any baseline a join may have given.
func future(i int) string { return fmt.Sprintf("%d-%d", int64(1)<<50, i) }

// publish publishes one event through the broker and returns its id.
func publish(t *testing.T, b *broker.Memory, channel, data string) string {
	t.Helper()
	ids, err := b.Publish(context.Background(), "", events.Publication{Channel: channel, Event: "e", Data: json.RawMessage(data)})
	if err != nil {
		t.Fatal(err)
	}
	return ids[0]
}

// eventData returns the data of an event frame, or the frame itself when
// it is not one.
func eventData(f []byte) string {
	var e events.Frame
	if json.Unmarshal(f, &e) != nil || e.Type != "event" {
		return string(f)
	}
	return string(e.Data)
}

func TestBroadcastSharesOneFrame(t *testing.T) {
	h, _ := newHub(t, Config{})
	a, b, other := newPipe(8), newPipe(8), newPipe(8)
	add(t, h, "1", a, "user:1", "public:x")
	add(t, h, "1", b, "user:1")
	add(t, h, "2", other, "user:2")

	frame := []byte(`{"type":"event"}`)
	if n := h.Broadcast("user:1", future(0), "", frame); n != 2 {
		t.Fatalf("Broadcast reached %d, want 2", n)
	}
	ga, gb := a.next(t), b.next(t)
	if &ga[0] != &frame[0] || &gb[0] != &frame[0] {
		t.Error("recipients got copies, want the same bytes")
	}
	h.Broadcast("user:2", future(0), "", []byte("two"))
	if got := string(other.next(t)); got != "two" {
		t.Errorf("user 2 got %q", got)
	}
	select {
	case f := <-a.frames:
		t.Errorf("user 1 got user 2's frame %q", f)
	default:
	}
}

func TestJoinRules(t *testing.T) {
	h, b := newHub(t, Config{MaxSubscriptions: 2})
	p := newPipe(8)
	c := add(t, h, "1", p)
	ctx := context.Background()
	tests := []struct {
		channel string
		reply   string
		err     error
	}{
		{"public:a", "reply already=false resumed=false recovered=false", nil},
		{"public:a", "reply already=true resumed=false recovered=true", nil},
		{"public:b", "reply already=false resumed=false recovered=false", nil},
		{"public:c", "", ErrTooManyChannels},
	}
	for _, tt := range tests {
		if err := h.Join(ctx, c, tt.channel, "", reply); err != tt.err {
			t.Errorf("Join(%q) = %v, want %v", tt.channel, err, tt.err)
		}
		if tt.reply != "" {
			if got := string(p.next(t)); got != tt.reply {
				t.Errorf("Join(%q) replied %q, want %q", tt.channel, got, tt.reply)
			}
		}
	}
	if !h.Leave(c, "public:a") || h.Leave(c, "public:a") {
		t.Error("Leave should report true once, then false")
	}
	if b.Last("public:a") != "" || b.Last("public:b") == "" {
		t.Error("the source's references do not follow the joins")
	}
	h.Remove(c)
	if h.Conns() != 0 || h.Subscriptions() != 0 || h.Channels() != 0 {
		t.Errorf("after Remove: conns %d subs %d channels %d, want 0", h.Conns(), h.Subscriptions(), h.Channels())
	}
	if b.Last("public:b") != "" {
		t.Error("Remove left a source reference")
	}
	if err := h.Join(ctx, c, "public:x", "", reply); err != ErrClosed {
		t.Errorf("Join after Remove: %v, want ErrClosed", err)
	}
}

// TestJoinFromLast: a fresh join's Last is a point after which every event
// reaches the connection, once, even an event published at once.
func TestJoinFromLast(t *testing.T) {
	h, b := newHub(t, Config{})
	publish(t, b, "public:x", "0")
	p := newPipe(8)
	c := add(t, h, "1", p)
	var last string
	if err := h.Join(context.Background(), c, "public:x", "", func(j Joined) []byte { last = j.Last; return []byte("reply") }); err != nil {
		t.Fatal(err)
	}
	id := publish(t, b, "public:x", "1")
	if events.CompareIDs(id, last) <= 0 {
		t.Fatalf("event %s not after last %s", id, last)
	}
	for _, want := range []string{"reply", "1"} {
		if got := eventData(p.next(t)); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// TestSlowConsumerClosedWithoutBlockingOthers: a client whose socket write
// blocks (here any write in progress counts: SlowWrite 1 ns) is closed once
// its queue passes QueueLen; the others keep going.
func TestSlowConsumerClosedWithoutBlockingOthers(t *testing.T) {
	var mu sync.Mutex
	codes := map[int]int{}
	h, _ := newHub(t, Config{QueueLen: 4, SlowWrite: time.Nanosecond, OnClose: func(code int) { mu.Lock(); codes[code]++; mu.Unlock() }})
	slow, fast := newPipe(0), newPipe(100)
	slow.stall()
	add(t, h, "1", slow, "public:news")
	add(t, h, "2", fast, "public:news")

	for i := range 20 { // the fast client reads each frame as it comes
		h.Broadcast("public:news", future(i), "", fmt.Appendf(nil, "%d", i))
		if got, want := string(fast.next(t)), fmt.Sprint(i); got != want {
			t.Fatalf("fast client frame %d = %q, want %q", i, got, want)
		}
		if i == 0 {
			eventually(t, "the slow client's writer to block", func() bool { return slow.writes.Load() == 1 })
		}
	}
	if code := slow.closeCode(t); code != CloseSlowConsumer {
		t.Errorf("slow client closed with %d, want %d", code, CloseSlowConsumer)
	}
	mu.Lock()
	defer mu.Unlock()
	if codes[CloseSlowConsumer] != 1 {
		t.Errorf("OnClose counts %v, want one %d", codes, CloseSlowConsumer)
	}
}

func TestCloseUserMatchesTag(t *testing.T) {
	h, _ := newHub(t, Config{})
	p1, p2, p3 := newPipe(1), newPipe(1), newPipe(1)
	c1, _ := h.Add("1", "u", "s1", p1)
	h.Add("2", "u", "s2", p2)
	h.Add("3", "v", "s1", p3)
	n := h.CloseUser("u", func(c *Conn) bool { return c.Tag == "s1" }, CloseRevoked, "revoked")
	if n != 1 {
		t.Fatalf("closed %d, want 1", n)
	}
	if code := p1.closeCode(t); code != CloseRevoked {
		t.Errorf("close code %d, want %d", code, CloseRevoked)
	}
	if !c1.Closing() {
		t.Error("c1 not closing")
	}
	if h.Broadcast("u", "1-0", "", nil); p2.code != 0 || p3.code != 0 {
		t.Error("other connections were closed")
	}
}

func TestDrainClosesEveryoneAndRefusesNew(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h, _ := newHub(t, Config{})
	var pipes []*pipe
	for i := range 50 {
		p := newPipe(1)
		c := add(t, h, fmt.Sprint(i%5), p, "public:x")
		pipes = append(pipes, p)
		go func() { // the owner: removes its connection once the socket closes
			<-p.closed
			h.Remove(c)
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h.Drain(ctx, CloseRestart, "restart", 100*time.Millisecond)
	for i, p := range pipes {
		if code := p.closeCode(t); code != CloseRestart {
			t.Errorf("conn %d closed with %d, want %d", i, code, CloseRestart)
		}
	}
	if h.Conns() != 0 || h.Subscriptions() != 0 {
		t.Errorf("after drain: %d conns, %d subs", h.Conns(), h.Subscriptions())
	}
	if _, err := h.Add("x", "u", "", newPipe(1)); err != ErrDraining {
		t.Errorf("Add while draining: %v, want ErrDraining", err)
	}
	h.Close()
}

// TestAddDuringDrain: a connection added while a drain begins is either
// refused or closed with the drain's code, never left open.
func TestAddDuringDrain(t *testing.T) {
	for range 20 {
		h, _ := newHub(t, Config{})
		var wg sync.WaitGroup
		var added []*pipe
		wg.Go(func() {
			for i := 0; ; i++ {
				p := newPipe(1)
				c, err := h.Add(fmt.Sprint(i), "u", "", p)
				if err != nil {
					return
				}
				added = append(added, p)
				go func() { <-p.closed; h.Remove(c) }()
			}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		h.Drain(ctx, CloseRestart, "restart", 0)
		cancel()
		wg.Wait()
		for i, p := range added {
			if code := p.closeCode(t); code != CloseRestart {
				t.Fatalf("conn %d of %d added during the drain closed with %d, want %d", i, len(added), code, CloseRestart)
			}
		}
	}
}

func TestPingReapsUnresponsive(t *testing.T) {
	var closes atomic.Int64
	h, _ := newHub(t, Config{PingInterval: 10 * time.Millisecond, PingTimeout: 20 * time.Millisecond,
		OnClose: func(code int) {
			if code == CloseAbnormal {
				closes.Add(1)
			}
		}})
	dead, alive := newPipe(0), newPipe(1000)
	dead.stall()
	add(t, h, "1", dead)
	add(t, h, "2", alive)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Run(ctx)
	if code := dead.closeCode(t); code != 1006 {
		t.Errorf("dead peer closed with %d, want 1006 (dropped)", code)
	}
	select {
	case <-alive.closed:
		t.Error("responsive peer was reaped")
	default:
	}
	deadline := time.Now().Add(5 * time.Second)
	for closes.Load() != 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := closes.Load(); n != 1 {
		t.Errorf("reaped connections counted %d times as %d, want 1", n, CloseAbnormal)
	}
}

// failing is a Transport whose writes fail.
type failing struct{ *pipe }

func (f failing) Write(time.Time, [][]byte) error { return io.ErrClosedPipe }

func TestWriteErrorIsCounted(t *testing.T) {
	codes := make(chan int, 4)
	h, _ := newHub(t, Config{OnClose: func(code int) { codes <- code }})
	p := newPipe(1)
	c, _ := h.Add("x", "u", "", failing{p})
	c.Send([]byte("frame"))
	select {
	case code := <-codes:
		if code != CloseAbnormal {
			t.Errorf("counted close %d, want %d", code, CloseAbnormal)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a failed write was not counted")
	}
	<-c.Done()
}

// hookSource runs a hook before each history read, to publish while the
// read is under way.
type hookSource struct {
	*broker.Memory
	beforeHistory func()
}

func (s hookSource) History(ctx context.Context, ch, since string) (events.Replay, error) {
	if s.beforeHistory != nil {
		s.beforeHistory()
	}
	return s.Memory.History(ctx, ch, since)
}

func TestJoinSendsMissedThenHeldThenLive(t *testing.T) {
	var h *Hub
	b := broker.NewMemory(func(ch, id, owner string, f []byte) { h.Broadcast(ch, id, owner, f) }, broker.MemoryConfig{})
	src := hookSource{Memory: b}
	var since string
	src.beforeHistory = func() { // live events while history is read
		for _, d := range []string{"3", "4"} {
			publish(t, b, "public:x", d)
		}
	}
	h = New(Config{}, src, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(h.Close)
	since = publish(t, b, "public:x", "0")
	publish(t, b, "public:x", "1")
	publish(t, b, "public:x", "2")
	p := newPipe(16)
	c := add(t, h, "1", p)
	if err := h.Join(context.Background(), c, "public:x", since, reply); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "public:x", "5")
	for _, want := range []string{"reply already=false resumed=true recovered=true", "1", "2", "3", "4", "5"} {
		if got := eventData(p.next(t)); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// A join that finds nothing missed still drops a live frame the client
// already has, arriving late through pub/sub.
func TestJoinDropsLateDuplicates(t *testing.T) {
	h, b := newHub(t, Config{})
	last := publish(t, b, "user:1", "0")
	p := newPipe(8)
	c := add(t, h, "1", p)
	h.Join(context.Background(), c, "user:1", last, reply)
	h.Broadcast("user:1", last, "", []byte("dup"))
	id := publish(t, b, "user:1", "6")
	for _, want := range []string{"reply already=false resumed=true recovered=true", "6"} {
		if got := eventData(p.next(t)); got != want {
			t.Fatalf("got %q, want %q (event %s)", got, want, id)
		}
	}
}

// TestRejoinWhileQueuedSendsNoDuplicate: events still queued from an
// earlier subscription are not replayed again by a quick rejoin with an
// older since.
func TestRejoinWhileQueuedSendsNoDuplicate(t *testing.T) {
	h, b := newHub(t, Config{})
	p := newPipe(64)
	p.stall()
	c := add(t, h, "1", p, "public:x")
	since := publish(t, b, "public:x", "0") // the client's last
	for _, d := range []string{"1", "2", "3"} {
		publish(t, b, "public:x", d)
	}
	h.Leave(c, "public:x")
	if err := h.Join(context.Background(), c, "public:x", since, reply); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "public:x", "4")
	p.mu.Lock()
	close(p.gate)
	p.mu.Unlock()
	var got []string
	for range 6 {
		got = append(got, eventData(p.next(t)))
	}
	want := []string{"0", "1", "2", "3", "reply already=false resumed=true recovered=true", "4"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	select {
	case f := <-p.frames:
		t.Fatalf("extra frame %q", f)
	default:
	}
}

// A client that stacks replays while a large one is still queued is a
// slow consumer.
func TestStackedReplaysAreASlowConsumer(t *testing.T) {
	h, b := newHub(t, Config{QueueBytes: 100})
	p := newPipe(0)
	p.stall()
	c := add(t, h, "1", p)
	var sinces []string
	for i := range 4 {
		ch := fmt.Sprintf("public:%d", i)
		sinces = append(sinces, publish(t, b, ch, "0"))
		publish(t, b, ch, `"`+strings.Repeat("x", 80)+`"`)
	}
	for i, since := range sinces {
		h.Join(context.Background(), c, fmt.Sprintf("public:%d", i), since, reply)
	}
	if code := p.closeCode(t); code != CloseSlowConsumer {
		t.Errorf("close %d, want %d", code, CloseSlowConsumer)
	}
}

// TestOwnedEventsReachTheOwnerOnly: an event of an owned effect evicts the
// other subscribers, and a join of another user's history is refused.
func TestOwnedEventsReachTheOwnerOnly(t *testing.T) {
	evicted := make(chan string, 4)
	h, b := newHub(t, Config{OnEvict: func(c *Conn, ch string) { evicted <- c.User + " " + ch }})
	pa, pb := newPipe(8), newPipe(8)
	add(t, h, "alice", pa, "effect:e1")
	cb := add(t, h, "bob", pb, "effect:e1")
	ids, err := b.Publish(context.Background(), "", events.Publication{Channel: "effect:e1", Event: "e", Data: json.RawMessage(`{"userId":"alice"}`)})
	if err != nil {
		t.Fatal(err)
	}
	if got := eventData(pa.next(t)); got != `{"userId":"alice"}` {
		t.Fatalf("owner got %q", got)
	}
	if got := <-evicted; got != "bob effect:e1" {
		t.Fatalf("evicted %q, want bob from effect:e1", got)
	}
	select {
	case f := <-pb.frames:
		t.Fatalf("other user got %q", f)
	default:
	}
	if err := h.Join(context.Background(), cb, "effect:e1", "1-0", reply); err != ErrForbidden {
		t.Fatalf("other user's resume of the owned effect: %v, want ErrForbidden", err)
	}
	if h.Subscriptions() != 1 {
		t.Fatalf("%d subscriptions, want the owner's only (event %s)", h.Subscriptions(), ids[0])
	}
}

// TestIdleQueueGivesMemoryBack: once written, a connection keeps no queue.
func TestIdleQueueGivesMemoryBack(t *testing.T) {
	h, _ := newHub(t, Config{})
	p := newPipe(2000)
	c := add(t, h, "1", p, "public:x")
	for i := range 1000 {
		h.Broadcast("public:x", future(i), "", []byte("f"))
	}
	for range 1000 {
		p.next(t)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		idle := !c.writing
		q, fl := cap(c.queue), cap(c.flight)
		c.mu.Unlock()
		if idle {
			if q != 0 || fl != 0 {
				t.Fatalf("idle connection keeps queue capacity %d and %d", q, fl)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("writer still running")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBacklogIsWrittenInFewWrites: frames that queued up while a socket
// was slow go out in few transport writes (one WebSocket message each),
// not one per frame.
func TestBacklogIsWrittenInFewWrites(t *testing.T) {
	h, _ := newHub(t, Config{})
	p := newPipe(200)
	p.stall()
	add(t, h, "1", p, "public:x")
	h.Broadcast("public:x", future(0), "", []byte("first")) // the writer takes it and blocks
	for i := range 100 {
		h.Broadcast("public:x", future(i+1), "", []byte(fmt.Sprintf("f%d", i)))
	}
	p.mu.Lock()
	close(p.gate)
	p.mu.Unlock()
	for range 101 {
		p.next(t)
	}
	if n := p.writes.Load(); n > 3 {
		t.Errorf("101 frames took %d writes, want the backlog in one or two", n)
	}
}

func TestConnSet(t *testing.T) {
	var s connSet
	conns := make([]*Conn, 3*fewConns)
	for i := range conns {
		conns[i] = &Conn{ID: fmt.Sprint(i)}
		s.add(conns[i])
		if s.len() != i+1 {
			t.Fatalf("len after %d adds = %d", i+1, s.len())
		}
	}
	for i, c := range conns {
		if !s.remove(c) || s.remove(c) {
			t.Fatalf("remove %d: want true once, then false", i)
		}
	}
	n := 0
	for range s.all() {
		n++
	}
	var nilSet *connSet
	for range nilSet.all() {
		n++
	}
	if n != 0 || s.len() != 0 {
		t.Fatalf("after removing all: %d left, len %d", n, s.len())
	}
}
