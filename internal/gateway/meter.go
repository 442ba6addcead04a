package gateway

import (
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/heraldgw/herald/internal/hub"
	"github.com/heraldgw/herald/internal/netpoll"
)

// Protocol-level floods (issue 12). coder/websocket answers pings and
// drops pongs itself and joins continuation frames into messages, so the
// read loop never sees most of what a flooding client sends: one socket
// sent 1.06 M empty continuation frames in 10 s, another 200,000 pings.
// The meter counts below the library instead, in the raw bytes the client
// sends.

// errFlood is what a metered connection's reads fail with once the client
// has sent more frames or bytes than its budget allows.
var errFlood = errors.New("client sent WebSocket frames or bytes over its budget")

// frameBudget is how much a client may send on one socket: frames of
// every kind (HERALD_CLIENT_FRAME_RATE/_BURST) and bytes, headers included
// (HERALD_CLIENT_BYTE_RATE/_BURST), each a token bucket. It is shared by
// every meter and never changes.
type frameBudget struct {
	frameRate, frameBurst float64   // frames per second, and at most at once
	byteRate, byteBurst   float64   // bytes per second, and at most at once
	epoch                 time.Time // origin of the meters' clock (monotonic)
}

// meter is the client's connection as the WebSocket library reads it: it
// finds the frame headers in the byte stream (frameScanner) and spends
// their frames and bytes from its budget as they arrive. Over the budget,
// every later Read fails with errFlood, without reading further.
//
// It costs an idle socket its fields only: no goroutine, no timer; the
// buckets are refilled from the clock when bytes arrive. Reads come one at
// a time (the library serialises them), and so do writes, so it needs no
// lock.
//
// It also bounds every write to the client (Write).
type meter struct {
	net.Conn
	budget   *frameBudget
	pending  []byte // client bytes net/http had read before the hijack, returned first
	early    bool   // there were such bytes (parkFirst)
	scan     frameScanner
	frames   float64       // tokens left
	bytes    float64       // tokens left
	last     time.Duration // when the buckets were last refilled, since budget.epoch
	over     bool          // over budget: every read fails
	lingered bool          // the bytes after the flood were discarded for floodLinger

	writeTimeout  time.Duration // bound of every write; 0: none
	writeDeadline time.Time     // the connection's write deadline

	// Parking (park.go): set up before the socket is used.
	poll   *netpoll.Watch // nil: reads block
	resume func()         // runs the read loop again, on a new goroutine

	state    atomic.Int32 // reading, parked or closed
	waiting  atomic.Bool  // the reader waits for the next message
	closing  atomic.Bool  // the gateway's closing handshake has begun
	blocking bool         // the reader's: the socket cannot park any more
}

// floodLinger is how long a flooding client's bytes are read and
// discarded after its budget ran out, once the closing handshake reads
// again: closing a connection with unread bytes makes the kernel send a
// reset, which can destroy the close frame (4008) in the client's receive
// queue before the client reads it.
const floodLinger = time.Second

// newMeter meters c against budget. pre holds the bytes that net/http had
// already read from c when it was hijacked: they are counted now and
// returned by the first reads.
func newMeter(c net.Conn, budget *frameBudget, pre []byte) *meter {
	m := &meter{Conn: c, budget: budget, frames: budget.frameBurst, bytes: budget.byteBurst,
		last: time.Since(budget.epoch)}
	if len(pre) > 0 {
		m.pending, m.early = pre, true
		m.spend(pre)
	}
	return m
}

// Read reads from the client, counting what arrives.
func (m *meter) Read(p []byte) (int, error) {
	if len(m.pending) > 0 {
		n := copy(p, m.pending)
		if m.pending = m.pending[n:]; len(m.pending) == 0 {
			m.pending = nil
		}
		return n, nil
	}
	if m.over {
		m.linger()
		return 0, errFlood
	}
	var n int
	var err error
	if m.mayPark() {
		if n, err = m.poll.TryRead(p); errors.Is(err, netpoll.ErrNoData) {
			return 0, errIdle
		}
	} else {
		n, err = m.Conn.Read(p)
	}
	if n > 0 && !m.spend(p[:n]) {
		m.over = true
		return 0, errFlood
	}
	return n, err
}

// Write writes to the client, and fails with os.ErrDeadlineExceeded if the
// client has not taken b within writeTimeout (less an eighth at most). The
// deadline is moved on only once an eighth of it has passed, not per
// write: setting one costs a runtime timer update, twice per write when it
// was set and cleared around each (5 % of the gateway's CPU at 20k
// personal events/s), and the library's own writes (pings, pongs, the
// closing handshake) get one too.
func (m *meter) Write(b []byte) (int, error) {
	if m.writeTimeout > 0 {
		now := time.Now()
		if m.writeDeadline.Sub(now) < m.writeTimeout-m.writeTimeout/8 {
			m.writeDeadline = now.Add(m.writeTimeout)
			if err := m.Conn.SetWriteDeadline(m.writeDeadline); err != nil {
				return 0, err
			}
		}
	}
	return m.Conn.Write(b)
}

// linger discards what the client sends for floodLinger, once.
func (m *meter) linger() {
	if m.lingered {
		return
	}
	m.lingered = true
	if m.Conn.SetReadDeadline(time.Now().Add(floodLinger)) != nil {
		return
	}
	buf := make([]byte, 4096)
	for {
		if _, err := m.Conn.Read(buf); err != nil {
			return
		}
	}
}

// spend refills the buckets for the time since the last spend, takes b's
// bytes and frames from them, and reports whether both stay within the
// budget.
func (m *meter) spend(b []byte) bool {
	now := time.Since(m.budget.epoch)
	dt := (now - m.last).Seconds()
	m.last = now
	m.frames = min(m.budget.frameBurst, m.frames+dt*m.budget.frameRate) - float64(m.scan.scan(b))
	m.bytes = min(m.budget.byteBurst, m.bytes+dt*m.budget.byteRate) - float64(len(b))
	return m.frames >= 0 && m.bytes >= 0
}

// frameScanner finds the frame headers in a client's byte stream (RFC 6455
// §5.2): two bytes, then 2 or 8 bytes of extended payload length, then a
// 4-byte masking key when the mask bit is set, then the payload, which it
// skips. It checks nothing else: the library refuses bad frames.
type frameScanner struct {
	header  uint8  // bytes of the current frame's header seen; 0 between frames and in a payload
	extEnd  uint8  // header index where the extended length ends
	size    uint8  // header length, known from its second byte
	payload uint64 // payload length while reading the header, then payload bytes left
}

// between reports whether the bytes scanned end with a whole frame.
func (s *frameScanner) between() bool { return s.header == 0 && s.payload == 0 }

// scan consumes b and returns how many frames begin in it.
func (s *frameScanner) scan(b []byte) (frames int) {
	for len(b) > 0 {
		if s.header == 0 && s.payload > 0 { // inside a payload
			k := min(uint64(len(b)), s.payload)
			s.payload -= k
			b = b[k:]
			continue
		}
		c := b[0]
		b = b[1:]
		switch {
		case s.header == 0:
			frames++
		case s.header == 1:
			s.extEnd = 2
			switch l := c & 0x7f; l {
			case 126:
				s.extEnd += 2
			case 127:
				s.extEnd += 8
			default:
				s.payload = uint64(l)
			}
			s.size = s.extEnd
			if c&0x80 != 0 { // masked: every client frame is
				s.size += 4
			}
		case s.header < s.extEnd:
			s.payload = s.payload<<8 | uint64(c)
		}
		if s.header++; s.header >= 2 && s.header == s.size {
			s.header = 0
		}
	}
	return frames
}

// readFailed ends the read loop of a socket whose read failed. A client over
// its budget is closed with 4008, as one over its message rate is, once the
// writer has sent the close.
func (cl *client) readFailed(err error) {
	if !errors.Is(err, errFlood) {
		return
	}
	cl.s.guards.Floods.Inc()
	cl.s.log.Info("client over its frame budget: closing with 4008", "conn", cl.conn.ID, "user", cl.conn.User)
	cl.conn.Close(hub.CloseRateLimited, "frame rate exceeded")
	<-cl.conn.Done()
}
