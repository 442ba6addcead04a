package gateway

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/hub"
)

// TestUpgradeAndWelcomeShareAWrite reads the server's first write after an
// upgrade request: it holds both the 101 response, complete and valid, and
// the welcome frame, so that a connect costs one write on each side.
func TestUpgradeAndWelcomeShareAWrite(t *testing.T) {
	ts := newTestServerWith(t, nil, hub.Config{})
	c := upgradeRaw(t, ts, "one-write", nil)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	first := buf[:n]
	br := bufio.NewReader(bytes.NewReader(first))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("first write %q: %v", first, err)
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
	rest := make([]byte, br.Buffered())
	br.Read(rest)
	if len(rest) < 2 || rest[0] != 0x81 || !bytes.Contains(rest, []byte(`"type":"welcome"`)) {
		t.Fatalf("after the 101 the same write holds %q, want the welcome frame", rest)
	}
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
