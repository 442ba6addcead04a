package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// start runs the server in-process on a free loopback port and returns its
// address; it stops when the test ends.
func start(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, pw, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	go io.Copy(io.Discard, pr)
	if err != nil {
		t.Fatalf("read address: %v", err)
	}
	return strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
}

func TestFanOut(t *testing.T) {
	addr := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	ws, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws?user=7", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	read := func() map[string]any {
		t.Helper()
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var f map[string]any
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("frame %s: %v", b, err)
		}
		return f
	}
	if f := read(); f["type"] != "welcome" {
		t.Fatalf("first frame %v, want welcome", f)
	}
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","ref":1,"channel":"public:x"}`)); err != nil {
		t.Fatal(err)
	}
	if f := read(); f["type"] != "subscribed" || f["channel"] != "public:x" {
		t.Fatalf("got %v, want subscribed to public:x", f)
	}

	post := func(path, body string) {
		t.Helper()
		resp, err := http.Post("http://"+addr+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("%s: status %d, want 202", path, resp.StatusCode)
		}
	}
	post("/api/publish", `{"channel":"user:7","event":"e","data":{"n":1}}`)
	post("/api/publish/batch", `{"items":[{"channel":"public:x","event":"e","data":{"n":2}},{"channel":"user:8","event":"e","data":{"n":3}}]}`)
	for _, want := range []string{"user:7", "public:x"} {
		f := read()
		if f["type"] != "event" || f["channel"] != want || f["id"] == "" || f["ts"] == nil {
			t.Fatalf("got %v, want an event frame on %s", f, want)
		}
	}
}
