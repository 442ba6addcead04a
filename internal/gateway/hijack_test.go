package gateway

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/hub"
)

// TestUpgradeAndWelcomeShareAWrite holds a socket's join (its personal
// channel's subscription): until it is done the server sends nothing, not
// even the 101; then its first write holds both the 101 response,
// complete and valid, and the welcome frame, so that a connect costs one
// write on each side.
func TestUpgradeAndWelcomeShareAWrite(t *testing.T) {
	ts := newTestServerWith(t, nil, hub.Config{})
	gate := heldJoins(ts)
	c := upgradeRaw(t, ts, "one-write", nil)
	nothingYet(t, c)
	gate <- nil
	resp, rest := firstWrite(t, c)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	for k, v := range map[string]string{
		"Upgrade":              "websocket",
		"Connection":           "Upgrade",
		"Sec-WebSocket-Accept": "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", // RFC 6455 §1.3's example
	} {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	if len(rest) < 2 || rest[0] != 0x81 || !bytes.Contains(rest, []byte(`"type":"welcome"`)) {
		t.Fatalf("after the 101 the same write holds %q, want the welcome frame", rest)
	}
}

// TestUpgradeAndRefusalShareAWrite: a socket whose join fails after the
// upgrade (Redis failed in that instant) gets the 101 and its 1013 close
// frame in one write, and nothing before.
func TestUpgradeAndRefusalShareAWrite(t *testing.T) {
	ts := newTestServerWith(t, nil, hub.Config{})
	gate := heldJoins(ts)
	c := upgradeRaw(t, ts, "refused", nil)
	nothingYet(t, c)
	gate <- errors.New("subscription failed")
	resp, rest := firstWrite(t, c)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	if len(rest) < 4 || rest[0] != 0x88 || binary.BigEndian.Uint16(rest[2:4]) != hub.CloseTryAgain {
		t.Fatalf("after the 101 the same write holds %q, want a close frame with %d", rest, hub.CloseTryAgain)
	}
}

// TestFrameBeforeTheFirstParkIsRead sends a frame after the hijack but
// before the socket is first parked (its join is held meanwhile, so the
// frame waits in the kernel, not in net/http's buffer): arming the poller
// must find it, and the frame is answered after the welcome.
func TestFrameBeforeTheFirstParkIsRead(t *testing.T) {
	ts := newTestServerWith(t, nil, hub.Config{})
	gate := heldJoins(ts)
	c := upgradeRaw(t, ts, "early-frame", nil)
	nothingYet(t, c)
	if _, err := c.Write(appendFrame(nil, true, 1, []byte(`{"type":"ping","ref":7}`), true, false)); err != nil {
		t.Fatal(err)
	}
	gate <- nil
	resp, got := firstWrite(t, c)
	if resp.StatusCode != http.StatusSwitchingProtocols || !bytes.Contains(got, []byte(`"type":"welcome"`)) {
		t.Fatalf("status %d, then %q: want 101 and the welcome", resp.StatusCode, got)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for !bytes.Contains(got, []byte(`{"type":"pong","ref":7}`)) {
		var b [512]byte
		n, err := c.Read(b[:])
		if err != nil {
			t.Fatalf("no pong for the frame sent before the first park (got %q): %v", got, err)
		}
		got = append(got, b[:n]...)
	}
}

// TestPanickingJoinGivesBackItsSlot: a join that panics (a bug) after the
// upgrade is logged and ends like a failed join: the socket gets 1013, it
// leaves the hub, the user's connection slot is given back, and the
// user's other socket keeps its subscription (the failed join gives back
// no reference it never took).
func TestPanickingJoinGivesBackItsSlot(t *testing.T) {
	ts := newTestServerWith(t, map[string]string{"HERALD_MAX_CONNS_PER_USER": "2"}, hub.Config{})
	first := ts.dial(t, "panics", "")
	if f := first.next(); f["type"] != "welcome" {
		t.Fatalf("first socket: %v", f)
	}
	gate := heldJoins(ts)
	c := upgradeRaw(t, ts, "panics", nil)
	gate <- errJoinPanics
	resp, rest := firstWrite(t, c)
	if resp.StatusCode != http.StatusSwitchingProtocols || len(rest) < 4 || rest[0] != 0x88 ||
		binary.BigEndian.Uint16(rest[2:4]) != hub.CloseTryAgain {
		t.Fatalf("status %d, then %q: want 101 and a close frame with %d", resp.StatusCode, rest, hub.CloseTryAgain)
	}
	c.Close() // rather than answer the close handshake
	waitFor(t, "the socket out of the hub", func() bool { return ts.hub.Conns() == 1 })
	waitFor(t, "the slot given back", func() bool {
		l, r, err := ts.slots.Acquire(t.Context(), "panics", 2) // the first socket holds one
		if r.Allowed {
			ts.slots.Release(t.Context(), l)
		}
		return err == nil && r.Allowed
	})
	ts.source.gate.Store(nil)
	if st, _ := ts.publish(t, testKey, "", `{"channel":"user:panics","event":"effect.complete","data":{}}`); st != http.StatusAccepted {
		t.Fatalf("publish: %d", st)
	}
	if f := first.next(); f["type"] != "event" {
		t.Fatalf("the user's other socket got %v, want the event", f)
	}
}

// heldJoins makes every join on ts wait for a verdict on the returned
// channel (nil: go on; an error: fail).
func heldJoins(ts *testServer) chan<- error {
	gate := make(chan error, 1)
	ts.source.gate.Store(&gate)
	return gate
}

// nothingYet checks that the server sends nothing on c for a while (the
// old behaviour, the 101 at once, would show within it).
func nothingYet(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	var b [512]byte
	if n, err := c.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the server sent %q (%v) before the join was done, want nothing before the first frame", b[:n], err)
	}
}

// firstWrite reads what the server sent first on c (one read: a write of
// a few hundred bytes arrives whole over loopback) and returns the HTTP
// response at its start and the bytes that follow it.
func firstWrite(t *testing.T, c net.Conn) (*http.Response, []byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(bytes.NewReader(buf[:n]))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("first write %q: %v", buf[:n], err)
	}
	rest := make([]byte, br.Buffered())
	br.Read(rest)
	return resp, rest
}

// upgradeRaw dials ts over plain TCP and sends, in one write, a WebSocket
// upgrade request with a new session of user, followed by then (frames,
// or nothing). The connection closes with the test.
func upgradeRaw(t *testing.T, ts *testServer, user string, then []byte) net.Conn {
	t.Helper()
	sess, err := ts.sessions.Create(t.Context(), user, "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	req := fmt.Appendf(nil, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer %s\r\n\r\n", sess.ID)
	if _, err := c.Write(append(req, then...)); err != nil {
		t.Fatal(err)
	}
	return c
}
