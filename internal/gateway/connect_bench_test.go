package gateway

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/heraldgw/herald/internal/hub"
)

// BenchmarkConnect: one authenticated WebSocket connect over loopback TCP,
// through the whole path (limits, session, slot, upgrade, join, welcome),
// on the memory backends, until the client has the welcome; the socket is
// then closed, one connect after the other. The client's own cost is in
// the figures too: compare runs, not absolute values.
func BenchmarkConnect(b *testing.B) {
	ts := newTestServerWith(b, map[string]string{"HERALD_MAX_CONNS_PER_USER": "1000000", "HERALD_CONNECT_LIMIT": "1000000000"}, hub.Config{})
	sess, err := ts.sessions.Create(context.Background(), "u1", "", "", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	url := "ws" + strings.TrimPrefix(ts.url, "http") + "/ws"
	opts := &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + sess.ID}}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		c, _, err := websocket.Dial(ctx, url, opts)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.Read(ctx); err != nil { // the welcome
			b.Fatal(err)
		}
		c.CloseNow()
	}
}
