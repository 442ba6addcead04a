package hub

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// pipe is an in-process Transport: frames land in a channel; a closed gate
// makes writes block until it opens (a stalled client).
type pipe struct {
	frames chan []byte
	gate   chan struct{}

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

func (p *pipe) Write(ctx context.Context, b []byte) error {
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

func (p *pipe) Ping(ctx context.Context) error { return p.Write(ctx, nil) }

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

func newHub(t *testing.T, cfg Config) *Hub {
	t.Helper()
	h := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(h.Close)
	return h
}

func add(t *testing.T, h *Hub, user string, p *pipe, channels ...string) *Conn {
	t.Helper()
	c, err := h.Add(fmt.Sprintf("c%p", p), user, "", p)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range channels {
		if _, err := h.Subscribe(c, ch); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func TestBroadcastSharesOneFrame(t *testing.T) {
	h := newHub(t, Config{})
	a, b, other := newPipe(8), newPipe(8), newPipe(8)
	add(t, h, "1", a, "user:1", "public:x")
	add(t, h, "1", b, "user:1")
	add(t, h, "2", other, "user:2")

	frame := []byte(`{"type":"event"}`)
	if n := h.Broadcast("user:1", "1-0", frame); n != 2 {
		t.Fatalf("Broadcast reached %d, want 2", n)
	}
	ga, gb := a.next(t), b.next(t)
	if &ga[0] != &frame[0] || &gb[0] != &frame[0] {
		t.Error("recipients got copies, want the same bytes")
	}
	h.Broadcast("user:2", "1-0", []byte("two"))
	if got := string(other.next(t)); got != "two" {
		t.Errorf("user 2 got %q", got)
	}
	select {
	case f := <-a.frames:
		t.Errorf("user 1 got user 2's frame %q", f)
	default:
	}
}

func TestSubscribeRules(t *testing.T) {
	h := newHub(t, Config{MaxSubscriptions: 2})
	c := add(t, h, "1", newPipe(1))
	tests := []struct {
		channel string
		added   bool
		err     error
	}{
		{"a", true, nil},
		{"a", false, nil},
		{"b", true, nil},
		{"c", false, ErrTooManyChannels},
	}
	for _, tt := range tests {
		added, err := h.Subscribe(c, tt.channel)
		if added != tt.added || err != tt.err {
			t.Errorf("Subscribe(%q) = %v, %v; want %v, %v", tt.channel, added, err, tt.added, tt.err)
		}
	}
	if !h.Unsubscribe(c, "a") || h.Unsubscribe(c, "a") {
		t.Error("Unsubscribe should report true once, then false")
	}
	if got := h.Remove(c); len(got) != 1 || got[0] != "b" {
		t.Errorf("Remove returned %v, want [b]", got)
	}
	if h.Conns() != 0 || h.Subscriptions() != 0 || h.Channels() != 0 {
		t.Errorf("after Remove: conns %d subs %d channels %d, want 0", h.Conns(), h.Subscriptions(), h.Channels())
	}
	if _, err := h.Subscribe(c, "x"); err != ErrClosed {
		t.Errorf("Subscribe after Remove: %v, want ErrClosed", err)
	}
}

func TestSlowConsumerClosedWithoutBlockingOthers(t *testing.T) {
	var mu sync.Mutex
	codes := map[int]int{}
	h := newHub(t, Config{QueueLen: 4, OnClose: func(code int) { mu.Lock(); codes[code]++; mu.Unlock() }})
	slow, fast := newPipe(0), newPipe(100)
	slow.stall()
	add(t, h, "1", slow, "public:news")
	add(t, h, "2", fast, "public:news")

	for i := range 20 { // the fast client reads each frame as it comes
		h.Broadcast("public:news", fmt.Sprintf("%d-0", i), fmt.Appendf(nil, "%d", i))
		if got, want := string(fast.next(t)), fmt.Sprint(i); got != want {
			t.Fatalf("fast client frame %d = %q, want %q", i, got, want)
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
	h := newHub(t, Config{})
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
	if h.Broadcast("u", "1-0", nil); p2.code != 0 || p3.code != 0 {
		t.Error("other connections were closed")
	}
}

func TestDrainClosesEveryoneAndRefusesNew(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h := New(Config{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
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

func TestPingReapsUnresponsive(t *testing.T) {
	h := newHub(t, Config{PingInterval: 10 * time.Millisecond, PingTimeout: 20 * time.Millisecond})
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
}

func TestResumeSendsMissedThenHeldThenLive(t *testing.T) {
	h := newHub(t, Config{})
	p := newPipe(16)
	c := add(t, h, "1", p)
	if added, err := h.SubscribeResume(c, "public:x"); !added || err != nil {
		t.Fatalf("SubscribeResume = %v, %v", added, err)
	}
	for _, id := range []string{"5", "6", "7"} { // live frames while history is read
		h.Broadcast("public:x", id, []byte("live"+id))
	}
	missed := []Frame{{"4", []byte("hist4")}, {"5", []byte("hist5")}, {"6", []byte("hist6")}}
	c.Resume("public:x", []byte("reply"), missed, func(id string) bool { return id <= "6" })
	h.Broadcast("public:x", "6", []byte("late6")) // pub/sub lagging behind the history read
	h.Broadcast("public:x", "8", []byte("live8"))
	for _, want := range []string{"reply", "hist4", "hist5", "hist6", "live7", "live8"} {
		if got := string(p.next(t)); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// A resume that finds nothing missed still drops a live frame the client
// already has, arriving late through pub/sub.
func TestResumeWithNothingMissedDropsLateDuplicates(t *testing.T) {
	h := newHub(t, Config{})
	p := newPipe(8)
	c := add(t, h, "1", p)
	h.SubscribeResume(c, "user:1")
	c.Resume("user:1", []byte("welcome"), nil, func(id string) bool { return id <= "5" })
	h.Broadcast("user:1", "5", []byte("dup5"))
	h.Broadcast("user:1", "6", []byte("live6"))
	for _, want := range []string{"welcome", "live6"} {
		if got := string(p.next(t)); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// A client that stacks resumes while its backlog is still large is a slow
// consumer.
func TestStackedResumesAreASlowConsumer(t *testing.T) {
	h := newHub(t, Config{QueueBytes: 100})
	p := newPipe(0)
	p.stall()
	c := add(t, h, "1", p)
	big := []Frame{{"1", make([]byte, 80)}, {"2", make([]byte, 80)}}
	for i := range 4 {
		ch := fmt.Sprintf("public:%d", i)
		h.SubscribeResume(c, ch)
		c.Resume(ch, nil, big, func(string) bool { return false })
	}
	if code := p.closeCode(t); code != CloseSlowConsumer {
		t.Errorf("close %d, want %d", code, CloseSlowConsumer)
	}
}
