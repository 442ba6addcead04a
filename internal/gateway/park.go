package gateway

import (
	"errors"

	"github.com/heraldgw/herald/internal/netpoll"
)

// Parking idle sockets (issue 10). A socket's reader spends nearly all its
// life waiting for a client that has nothing to say, and a goroutine
// blocked in Read keeps its stack, which was most of an idle socket's
// memory. So the reader, once the client's bytes run out between two
// messages, hands the socket to the process's poller and ends; the poller
// (one per Server, netpoll.Poller) starts a new reader when bytes arrive,
// the peer closes, or the gateway closes the socket.
//
// The WebSocket library reads only on its caller's goroutine and cannot
// stop half-way, so the meter under it (meter.go) is where a read can end
// without blocking: when the reader waits for the next message (meter.wait),
// at a frame boundary, with nothing received, a read fails with errIdle
// instead of blocking. The library has then consumed nothing and returns
// the error from Reader, its state untouched, and the next Reader call
// carries on. Everywhere else (inside a frame, inside a message, in the
// closing handshake) reads block as before.

// errIdle is what a metered read returns instead of blocking when the
// reader may park (see meter.wait).
var errIdle = errors.New("client has nothing to read yet")

// States of a metered socket's reader.
const (
	reading int32 = iota // a goroutine runs the read loop
	parked               // none does: the poller or Close starts one
	closed               // the connection is closed
)

// watch registers m with p, so that its reader may park. Without a poller
// (nil: not Linux), or for a connection it cannot watch, m's reads block
// as ever. Call it before the connection is used, and set m.resume before
// its reader starts.
func (m *meter) watch(p *netpoll.Poller) {
	if p == nil {
		return
	}
	if w, err := p.Watch(m.Conn, m.wake); err == nil {
		m.poll = w
	}
}

// wait tells the meter whether the reader is waiting for the next message
// (inside the library's Reader), the only time a read may return errIdle.
func (m *meter) wait(on bool) {
	if m.poll != nil {
		m.waiting.Store(on)
	}
}

// mayPark reports whether a read now returns errIdle rather than block
// when nothing has arrived. The order matters: reads of the closing
// handshake, on another goroutine, stop at closing.
func (m *meter) mayPark() bool {
	return m.poll != nil && !m.closing.Load() && m.waiting.Load() && !m.blocking && m.scan.between()
}

// park hands the socket to the poller, after a read returned errIdle. It
// reports whether it did: the caller's goroutine must then end, and touch
// nothing of the socket. When it did not, the caller reads on, and its
// reads block from now on (the socket cannot be watched) or fail (it is
// closed).
func (m *meter) park() bool {
	if !m.state.CompareAndSwap(reading, parked) {
		m.blocking = true // closed: the next read fails
		return false
	}
	if err := m.poll.Arm(); err != nil {
		if m.state.CompareAndSwap(parked, reading) {
			m.blocking = true
			return false
		}
		// Close took it meanwhile and started a reader.
	}
	return true
}

// parkFirst parks a new socket before its reader ever ran, so that the
// first reader starts only once the client sends: most clients send
// nothing after connecting, and a reader started only to park at once
// costs a goroutine and a read per connect. It reports whether it did; the
// caller starts the reader otherwise. A socket whose client sent frames
// with its upgrade request must read them first: they sit in the buffered
// reader above the meter, where the poller cannot see them.
func (m *meter) parkFirst() bool {
	if m.poll == nil || m.early {
		return false
	}
	return m.park()
}

// wake starts a reader for a parked socket; the poller calls it.
func (m *meter) wake() {
	if m.state.CompareAndSwap(parked, reading) {
		go m.resume()
	}
}

// closeHandshake tells the meter that the gateway is closing the socket:
// the library's closing handshake reads the client's close frame itself,
// on the closing goroutine, and those reads must block.
func (m *meter) closeHandshake() { m.closing.Store(true) }

// Close closes the connection, and starts a reader for a parked socket, to
// find it closed and release what it holds.
func (m *meter) Close() error {
	was := m.state.Swap(closed)
	if m.poll != nil && was != closed {
		m.poll.Close()
	}
	err := m.Conn.Close()
	if was == parked {
		go m.resume()
	}
	return err
}
