package gateway

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/heraldgw/herald/internal/hub"
)

// readers counts the goroutines running a socket's read loop.
func readers() int {
	var b bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	n := 0
	for _, rec := range strings.Split(b.String(), "\n\n") {
		if strings.Contains(rec, "gateway.(*client).readLoop") {
			var k int
			fmt.Sscanf(rec, "%d @", &k)
			n += k
		}
	}
	return n
}

// waitFor waits up to 10 s for cond.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestIdleSocketsPark holds sockets whose clients send nothing: no
// goroutine reads them, yet the server's pings are answered (a ping
// unanswered for PingTimeout would close them), frames the clients send
// are answered, and a client's close releases its socket.
func TestIdleSocketsPark(t *testing.T) {
	const pingTimeout = time.Second
	ts := newTestServerWith(t, nil, hub.Config{PingInterval: 20 * time.Millisecond, PingTimeout: pingTimeout})
	const n = 20
	clients := make([]*wsClient, n)
	for i := range clients {
		clients[i] = ts.dial(t, fmt.Sprintf("idle-%d", i), "")
		if f := clients[i].next(); f["type"] != "welcome" {
			t.Fatalf("got %v, want the welcome", f)
		}
	}
	waitFor(t, "every idle socket parked", func() bool { return readers() == 0 })

	// Pongs wake parked sockets, which park again: past the ping timeout,
	// after many ping rounds, every socket is open and answers.
	time.Sleep(pingTimeout + 25*20*time.Millisecond)
	for _, cl := range clients {
		cl.quiet()
	}
	if got := ts.hub.Conns(); got != n {
		t.Fatalf("%d sockets open, want %d", got, n)
	}
	waitFor(t, "the sockets parked again after their frames", func() bool { return readers() == 0 })

	clients[0].c.Close(websocket.StatusNormalClosure, "bye")
	waitFor(t, "a parked socket closed by its client released", func() bool { return ts.hub.Conns() == n-1 })
}

// TestParkedSocketReadsSplitFrames sends frames cut anywhere, with pauses
// between the pieces, so that the reader finds nothing more to read inside
// a frame header, inside a payload and between frames: only the last may
// park it, and every frame is answered in order. The first frame comes in
// the same write as the upgrade request (net/http may have read it before
// the hijack).
func TestParkedSocketReadsSplitFrames(t *testing.T) {
	ts := newTestServerWith(t, map[string]string{"HERALD_CLIENT_MSG_BURST": "1000"}, hub.Config{})
	c := upgradeRaw(t, ts, "split", appendFrame(nil, true, 1, []byte(`{"type":"ping","ref":0}`), true, false))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var lines []string // server frames read and not yet taken
	readText := func() string {
		t.Helper()
		for len(lines) == 0 {
			var h [2]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				t.Fatal(err)
			}
			size := int(h[1] & 0x7f)
			if size == 126 {
				var ext [2]byte
				if _, err := io.ReadFull(br, ext[:]); err != nil {
					t.Fatal(err)
				}
				size = int(binary.BigEndian.Uint16(ext[:]))
			}
			p := make([]byte, size) // server messages here are under 64 KiB
			if _, err := io.ReadFull(br, p); err != nil {
				t.Fatal(err)
			}
			lines = strings.Split(string(p), "\n")
		}
		l := lines[0]
		lines = lines[1:]
		return l
	}
	if w := readText(); !strings.Contains(w, `"welcome"`) {
		t.Fatalf("got %s, want the welcome", w)
	}
	if got, want := readText(), `{"type":"pong","ref":0}`; got != want {
		t.Fatalf("got %s, want %s: the frame sent with the upgrade", got, want)
	}
	waitFor(t, "the socket parked", func() bool { return readers() == 0 })

	var msg []byte
	for ref := 1; ref <= 3; ref++ {
		msg = appendFrame(msg, true, 1, fmt.Appendf(nil, `{"type":"ping","ref":%d}`, ref), true, ref == 2)
	}
	for _, cut := range []int{1, 2, 5, 9, 30, 40, 41, len(msg) - 1} { // header, key, payload, next frame
		for i := 0; i < len(msg); i += cut {
			c.Write(msg[i:min(i+cut, len(msg))])
			time.Sleep(time.Millisecond)
		}
		for ref := 1; ref <= 3; ref++ {
			if got, want := readText(), fmt.Sprintf(`{"type":"pong","ref":%d}`, ref); got != want {
				t.Fatalf("pieces of %d bytes: got %s, want %s", cut, got, want)
			}
		}
	}
	waitFor(t, "the socket parked again", func() bool { return readers() == 0 })
}
