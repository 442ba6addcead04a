package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// appendFrame appends a frame with opcode op and payload p, masked or not,
// with the shortest length encoding that fits (or a longer one when wide).
func appendFrame(dst []byte, fin bool, op byte, p []byte, masked, wide bool) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	dst = append(dst, b0)
	var m byte
	if masked {
		m = 0x80
	}
	switch n := len(p); {
	case n < 126 && !wide:
		dst = append(dst, m|byte(n))
	case n < 1<<16:
		dst = append(dst, m|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, m|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	key := [4]byte{1, 2, 3, 4}
	if masked {
		dst = append(dst, key[:]...)
	}
	for i, c := range p {
		if masked {
			c ^= key[i%4]
		}
		dst = append(dst, c)
	}
	return dst
}

// TestFrameScannerCountsEveryFrame: frames of every size and length
// encoding, masked or not, are each counted once however the stream is cut.
func TestFrameScannerCountsEveryFrame(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 127, 1000, 65535, 65536, 70000}
	var stream []byte
	frames := 0
	for _, n := range sizes {
		for _, masked := range []bool{true, false} {
			for _, wide := range []bool{false, true} {
				stream = appendFrame(stream, n%2 == 0, byte(1+frames%10), bytes.Repeat([]byte{'x'}, n), masked, wide)
				frames++
			}
		}
	}
	for _, chunk := range []int{1, 2, 3, 7, 14, 4096, len(stream)} {
		var s frameScanner
		got := 0
		for b := stream; len(b) > 0; {
			k := min(chunk, len(b))
			got += s.scan(b[:k])
			b = b[k:]
		}
		if got != frames || s.header != 0 || s.payload != 0 {
			t.Errorf("chunks of %d: %d frames, scanner %+v; want %d and a scanner between frames", chunk, got, s, frames)
		}
	}
}

// FuzzFrameScanner: whatever bytes arrive, however cut, the scanner counts
// the same frames and ends in the same state.
func FuzzFrameScanner(f *testing.F) {
	f.Add(appendFrame(appendFrame(nil, false, 1, nil, true, false), true, 0, []byte("abc"), true, true), 3)
	f.Add(appendFrame(nil, true, 9, bytes.Repeat([]byte{'p'}, 125), true, false), 1)
	f.Add([]byte{0x81, 0xff, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 'h', 'e', 'l', 'l', 'o', 0x89, 0x80}, 9)
	f.Fuzz(func(t *testing.T, b []byte, cut int) {
		var whole, parts frameScanner
		n := whole.scan(b)
		cut = max(0, min(cut, len(b)))
		m := parts.scan(b[:cut]) + parts.scan(b[cut:])
		if n != m || whole != parts {
			t.Fatalf("whole: %d frames, %+v; cut at %d: %d frames, %+v", n, whole, cut, m, parts)
		}
	})
}

// TestMeterBudget: frames and bytes are counted until either bucket runs
// dry; then reads fail with errFlood and read nothing more.
func TestMeterBudget(t *testing.T) {
	ping := appendFrame(nil, true, 9, []byte("p"), true, false) // 7 bytes
	tests := []struct {
		name     string
		budget   frameBudget
		frames   int
		wantOver bool
	}{
		{"within both", frameBudget{frameBurst: 10, byteBurst: 70}, 10, false},
		{"frames over", frameBudget{frameBurst: 10, byteBurst: 1 << 20}, 11, true},
		{"bytes over", frameBudget{frameBurst: 1 << 20, byteBurst: 70}, 11, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			tt.budget.epoch = time.Now()
			m := newMeter(server, &tt.budget, nil)
			go func() {
				for range tt.frames {
					client.Write(ping)
				}
				client.Write([]byte("tail"))
			}()
			p := make([]byte, len(ping))
			var err error
			for i := 0; i < tt.frames && err == nil; i++ {
				_, err = io.ReadFull(m, p)
			}
			if over := err == errFlood; over != tt.wantOver {
				t.Fatalf("after %d frames: err %v, want over budget %v", tt.frames, err, tt.wantOver)
			}
			if tt.wantOver {
				if _, err := m.Read(p); err != errFlood {
					t.Errorf("read after the flood: %v, want errFlood", err)
				}
			}
		})
	}
}

// TestHijackKeepsBytesReadBeforeTheUpgrade sends the upgrade request and
// the first frames in one write, so that net/http has often read some of
// the frames already when the handler hijacks the connection: the server
// must receive every message intact, whatever the buffer sizes.
func TestHijackKeepsBytesReadBeforeTheUpgrade(t *testing.T) {
	for _, bufs := range []hijackBuffers{{}, {read: 16, write: 16}, {read: 512, write: 512}} {
		t.Run(fmt.Sprintf("read %d write %d", bufs.read, bufs.write), func(t *testing.T) {
			budget := &frameBudget{frameRate: 1, frameBurst: 1000, byteRate: 1, byteBurst: 1 << 20, epoch: time.Now()}
			got := make(chan string, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ws, err := websocket.Accept(&meteredWriter{ResponseWriter: w, budget: budget, bufs: bufs}, r, nil)
				if err != nil {
					got <- "accept: " + err.Error()
					return
				}
				defer ws.CloseNow()
				var msgs []string
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				for range 3 {
					_, b, err := ws.Read(ctx)
					if err != nil {
						msgs = append(msgs, "error: "+err.Error())
						break
					}
					msgs = append(msgs, string(b))
				}
				ws.Write(context.Background(), websocket.MessageText, []byte("ok"))
				got <- strings.Join(msgs, ",")
			}))
			defer srv.Close()
			want := "first,second " + strings.Repeat("y", 300) + ",third"
			for i := range 50 {
				c, err := net.Dial("tcp", srv.Listener.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				req := "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
					"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
				msg := []byte(req)
				for _, m := range strings.Split(want, ",") {
					msg = appendFrame(msg, true, 1, []byte(m), true, rand.N(2) == 0)
				}
				cut := len(req) + rand.N(len(msg)-len(req)) // the rest follows apart
				c.Write(msg[:cut])
				c.Write(msg[cut:])
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf("round %d: upgrade %v %v", i, resp, err)
				}
				if s := <-got; s != want {
					t.Fatalf("round %d (cut at %d of %d): server read %q, want %q", i, cut, len(msg), s, want)
				}
				c.Close()
			}
		})
	}
}

// TestMeterWriteDeadline: every write gets WriteTimeout, a write long
// after the last one too (a deadline left from it would have passed), and
// a write the client does not take fails with os.ErrDeadlineExceeded.
func TestMeterWriteDeadline(t *testing.T) {
	const timeout = 100 * time.Millisecond
	budget := &frameBudget{frameBurst: 1, byteBurst: 1, epoch: time.Now()}

	client, server := net.Pipe()
	defer client.Close()
	go io.Copy(io.Discard, client)
	m := newMeter(server, budget, nil)
	m.writeTimeout = timeout
	if _, err := m.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(timeout + timeout/2) // idle past the first write's deadline
	if _, err := m.Write([]byte("after a pause")); err != nil {
		t.Fatalf("write after a pause: %v", err)
	}

	stalled, server2 := net.Pipe() // nobody reads
	defer stalled.Close()
	m = newMeter(server2, budget, nil)
	m.writeTimeout = timeout
	failed := make(chan error, 1)
	go func() {
		_, err := m.Write([]byte("never taken"))
		failed <- err
	}()
	select {
	case err := <-failed:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write to a client that does not read: %v, want os.ErrDeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second):
		server2.Close() // ends the write
		t.Fatal("a write to a client that does not read still blocks after 10s")
	}
}
