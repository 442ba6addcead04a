package hub

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsTransport adapts a coder/websocket server connection to Transport as
// the gateway does: one text message per Write, frames separated by "\n".
type wsTransport struct{ c *websocket.Conn }

func (w wsTransport) Write(deadline time.Time, frames [][]byte) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	return w.c.Write(ctx, websocket.MessageText, bytes.Join(frames, []byte{'\n'}))
}
func (w wsTransport) Ping(ctx context.Context) error { return w.c.Ping(ctx) }
func (w wsTransport) Close(code int, reason string) error {
	return w.c.Close(websocket.StatusCode(code), reason)
}
func (w wsTransport) CloseNow() error { return w.c.CloseNow() }

// wsHub serves h over real WebSockets on a loopback httptest server: every
// socket joins channel, and the hub connection of ?name=N is sent on the
// returned channel once joined. A socket's handler removes it from h when
// it ends.
func wsHub(t *testing.T, h *Hub, channel string) (url string, joined <-chan *Conn) {
	t.Helper()
	ch := make(chan *Conn, 8)
	var handlers sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		handlers.Add(1)
		defer handlers.Done()
		name := r.URL.Query().Get("name")
		c, err := h.Add(name, name, "", wsTransport{ws})
		if err != nil {
			ws.CloseNow()
			return
		}
		defer h.Remove(c)
		if err := h.Join(r.Context(), c, channel, "", func(Joined) []byte { return []byte(`{"type":"subscribed"}`) }); err != nil {
			ws.CloseNow()
			return
		}
		ch <- c
		<-ws.CloseRead(context.Background()).Done() // the reads that pongs and closes need
	}))
	t.Cleanup(func() {
		h.Close() // drops every socket: the handlers return
		handlers.Wait()
		srv.Close()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http"), ch
}

// eventually waits until cond holds, failing the test after 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFloodClosesOnlyTheStalledReader floods a channel with two real
// WebSocket subscribers: one reads everything, one stopped reading. The
// flood comes in bursts far longer than QueueLen, broadcast on one CPU
// (GOMAXPROCS 1) so that no writer runs before a burst is queued: the
// reading socket's queue passes QueueLen because the server is busy, not
// because the socket is slow. It must get every frame, in order, and stay
// open; the stalled one, once its TCP buffers are full and its write
// blocks, is closed with 4009 (here by QueueBytes: the bursts outpace
// SlowWrite).
func TestFloodClosesOnlyTheStalledReader(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const (
		channel   = "public:flood"
		burst     = 1000 // frames, 200 bytes each
		maxBursts = 200  // 40 MB: far more than loopback buffers and QueueBytes take
	)
	var mu sync.Mutex
	codes := map[int]int{}
	h, _ := newHub(t, Config{QueueLen: 16, OnClose: func(code int) { mu.Lock(); codes[code]++; mu.Unlock() }})
	url, joined := wsHub(t, h, channel)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	dial := func(name string) (*websocket.Conn, *Conn) {
		ws, _, err := websocket.Dial(ctx, url+"?name="+name, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.CloseNow() })
		ws.SetReadLimit(1 << 20)
		select {
		case c := <-joined:
			return ws, c
		case <-ctx.Done():
			t.Fatal("socket not joined")
			return nil, nil
		}
	}
	readerWS, reader := dial("reader")
	_, stalled := dial("stalled") // never read

	// The reader checks that event n comes n-th and counts them.
	var got atomic.Int64
	progress := make(chan struct{}, 1)
	readErr := make(chan error, 1)
	go func() {
		for {
			_, msg, err := readerWS.Read(ctx)
			if err != nil {
				readErr <- err
				return
			}
			for f := range bytes.SplitSeq(msg, []byte{'\n'}) {
				if bytes.HasPrefix(f, []byte(`{"type":"subscribed"}`)) {
					continue
				}
				n, err := strconv.ParseInt(string(bytes.TrimRight(f[len(`{"n":`):bytes.IndexByte(f, ',')], " ")), 10, 64)
				if err != nil || n != got.Load() {
					readErr <- fmt.Errorf("frame %q: want event %d", f, got.Load())
					return
				}
				got.Add(1)
			}
			select {
			case progress <- struct{}{}:
			default:
			}
		}
	}()

	frame := func(n int) []byte {
		f := fmt.Appendf(nil, `{"n":%d,"pad":"`, n)
		return append(append(f, bytes.Repeat([]byte{'x'}, 200-len(f)-2)...), `"}`...)
	}
	sent := 0
	for range maxBursts {
		if stalled.Closing() {
			break
		}
		for range burst {
			h.Broadcast(channel, future(sent), "", frame(sent))
			sent++
		}
		for got.Load() < int64(sent) {
			select {
			case <-progress:
			case err := <-readErr:
				t.Fatalf("reader after %d of %d frames: %v (reader closing: %v)", got.Load(), sent, err, reader.Closing())
			case <-ctx.Done():
				t.Fatalf("reader stuck at %d of %d frames (reader closing: %v)", got.Load(), sent, reader.Closing())
			}
		}
	}
	if !stalled.Closing() {
		t.Fatalf("stalled socket still open after %d frames", sent)
	}
	if reader.Closing() {
		t.Error("reading socket closed")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(codes) != 1 || codes[CloseSlowConsumer] != 1 {
		t.Errorf("closes by code %v, want one %d (the stalled socket)", codes, CloseSlowConsumer)
	}
}

// TestWriteTimeoutIsASlowConsumer: a write that waits WriteTimeout for the
// peer closes the connection as a slow consumer, not as a dead peer.
func TestWriteTimeoutIsASlowConsumer(t *testing.T) {
	var mu sync.Mutex
	codes := map[int]int{}
	h, _ := newHub(t, Config{WriteTimeout: 50 * time.Millisecond, OnClose: func(code int) { mu.Lock(); codes[code]++; mu.Unlock() }})
	p := newPipe(1)
	p.stall()
	c := add(t, h, "1", p, "public:x")
	h.Broadcast("public:x", future(0), "", []byte("0"))
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection not dropped")
	}
	mu.Lock()
	defer mu.Unlock()
	if codes[CloseSlowConsumer] != 1 || len(codes) != 1 {
		t.Errorf("closes by code %v, want one %d", codes, CloseSlowConsumer)
	}
}

// TestUnansweredPingBehindABlockedWriteIsASlowConsumer: a peer that does
// not answer a ping while a write to it is blocked is there but not
// reading: 4009, not a dead peer's 1006.
func TestUnansweredPingBehindABlockedWriteIsASlowConsumer(t *testing.T) {
	var mu sync.Mutex
	codes := map[int]int{}
	h, _ := newHub(t, Config{PingInterval: 10 * time.Millisecond, PingTimeout: 20 * time.Millisecond, SlowWrite: time.Nanosecond,
		OnClose: func(code int) { mu.Lock(); codes[code]++; mu.Unlock() }})
	p := newPipe(0)
	p.stall()
	c := add(t, h, "1", p, "public:x")
	h.Broadcast("public:x", future(0), "", []byte("0"))
	eventually(t, "the write to block", func() bool { return p.writes.Load() == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Run(ctx)
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection not dropped")
	}
	mu.Lock()
	defer mu.Unlock()
	if codes[CloseSlowConsumer] != 1 || len(codes) != 1 {
		t.Errorf("closes by code %v, want one %d", codes, CloseSlowConsumer)
	}
}
