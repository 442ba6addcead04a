//go:build linux

package netpoll

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// told waits for one call of a ready function.
func told(t *testing.T, ready <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatalf("not told within 10s: %s", what)
	}
}

func TestWatch(t *testing.T) {
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	client, server := pair(t)
	ready := make(chan struct{}, 10)
	w, err := p.Watch(server, func() { ready <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if _, err := w.TryRead(buf); !errors.Is(err, ErrNoData) {
		t.Fatalf("TryRead on a quiet connection: %v, want ErrNoData", err)
	}

	// Armed before the bytes come, and after: told once each time.
	if err := w.Arm(); err != nil {
		t.Fatal(err)
	}
	client.Write([]byte("one"))
	told(t, ready, "bytes after Arm")
	client.Write([]byte("two"))
	if err := w.Arm(); err != nil {
		t.Fatal(err)
	}
	told(t, ready, "bytes already there at Arm")
	if n, err := w.TryRead(buf); err != nil || string(buf[:n]) != "onetwo" {
		t.Fatalf("TryRead = %q, %v; want onetwo", buf[:n], err)
	}
	if len(ready) != 0 {
		t.Fatal("told more than once per Arm")
	}

	// The peer's close wakes it too, and then reads end.
	if err := w.Arm(); err != nil {
		t.Fatal(err)
	}
	client.Close()
	told(t, ready, "the peer's close")
	if _, err := w.TryRead(buf); err != io.EOF {
		t.Fatalf("TryRead after the peer's close: %v, want EOF", err)
	}

	// A closed connection cannot be armed.
	w.Close()
	server.Close()
	if err := w.Arm(); err == nil {
		t.Fatal("Arm of a closed connection succeeded")
	}
}

func TestClose(t *testing.T) {
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	_, server := pair(t)
	w, err := p.Watch(server, func() {})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	p.Close() // twice is fine
	if err := w.Arm(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Arm after Close: %v, want ErrClosed", err)
	}
	if _, err := p.Watch(server, func() {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Watch after Close: %v, want ErrClosed", err)
	}
}
