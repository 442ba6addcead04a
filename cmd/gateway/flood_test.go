package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// rawSocket is a WebSocket client that writes frames by hand, as a
// flooding client does, below any library.
type rawSocket struct {
	c  net.Conn
	br *bufio.Reader
}

// dialRaw upgrades a TCP connection to /ws with hdr's credentials.
func dialRaw(t *testing.T, addr string, hdr http.Header) *rawSocket {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	req, _ := http.NewRequest("GET", "http://"+addr+"/ws", nil)
	req.Header = hdr.Clone()
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	return &rawSocket{c: c, br: br}
}

// frame returns a masked client frame.
func clientFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	f := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	default:
		f = append(f, 0x80|126)
		f = binary.BigEndian.AppendUint16(f, uint16(n))
	}
	f = append(f, 0, 0, 0, 0) // a zero mask leaves the payload as is
	return append(f, payload...)
}

// closeCode reads server frames until a close frame and returns its code;
// -1 when the connection ends without one.
func (s *rawSocket) closeCode(t *testing.T) int {
	t.Helper()
	s.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		var h [2]byte
		if _, err := io.ReadFull(s.br, h[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return -1
			}
			t.Fatalf("no close frame: %v", err)
		}
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			io.ReadFull(s.br, l[:])
			n = int(binary.BigEndian.Uint16(l[:]))
		case 127:
			var l [8]byte
			io.ReadFull(s.br, l[:])
			n = int(binary.BigEndian.Uint64(l[:]))
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(s.br, p); err != nil {
			return -1
		}
		if h[0]&0x0f == 8 && n >= 2 {
			return int(binary.BigEndian.Uint16(p))
		}
	}
}

// TestProtocolFloodsAreClosedWith4008: frames the WebSocket library handles
// by itself (pings, pongs, continuation frames it joins) count toward the
// socket's budget like messages do, and so do bytes; a client over it is
// closed with 4008 while other sockets are untouched.
func TestProtocolFloodsAreClosedWith4008(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		start []byte // sent once first
		frame []byte // then sent until the gateway closes the socket
	}{
		{"pings", nil, nil, clientFrame(true, 0x9, nil)},
		{"pongs", nil, nil, clientFrame(true, 0xA, []byte("x"))},
		{"empty continuation frames", nil, clientFrame(false, 0x1, nil), clientFrame(false, 0x0, nil)},
		{"bytes in pings under the frame rate",
			map[string]string{"HERALD_CLIENT_FRAME_BURST": "1000000", "HERALD_CLIENT_BYTE_BURST": "16384", "HERALD_CLIENT_BYTE_RATE": "1000"},
			nil, clientFrame(true, 0x9, make([]byte, 125))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, rs := cluster(t, 1, tt.env)
			r := rs[0]
			sid := r.newSession(t, "u")
			calm := dial(t, r.wsURL(""), bearerHeader(sid))
			calm.nextOf("welcome")

			s := dialRaw(t, r.addr, bearerHeader(sid))
			var burst []byte
			for range 64 {
				burst = append(burst, tt.frame...)
			}
			go func() { // 200,000 frames at most, as fast as the socket takes them
				s.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
				s.c.Write(tt.start)
				for sent := 0; sent < 200_000; sent += 64 {
					if _, err := s.c.Write(burst); err != nil {
						return
					}
				}
			}()
			if code := s.closeCode(t); code != 4008 {
				t.Fatalf("flooding socket closed with %d, want 4008", code)
			}
			if n := r.metric(t, "herald_client_floods_total"); n != 1 {
				t.Errorf("herald_client_floods_total %v, want 1", n)
			}
			calm.send("ping", "")
			calm.nextOf("pong")
		})
	}
}
