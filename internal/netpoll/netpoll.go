// Package netpoll tells when idle connections have something to read, so
// that a connection waiting for its peer needs no goroutine of its own.
//
// Go parks a goroutine in every blocking Read, and a parked goroutine keeps
// its stack: at tens of thousands of idle WebSocket clients, which send
// nothing for minutes, those stacks are most of a gateway's memory. A
// Poller watches such connections with one goroutine for all of them (on
// Linux, an epoll instance beside the runtime's own) and calls back once a
// watched connection becomes readable, so the reader can be started again
// then.
package netpoll

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// ErrUnsupported is returned by New where the platform has no poller, and
// by Poller.Watch for a connection without a file descriptor (a TLS
// connection, a pipe): the caller then reads the blocking way.
var ErrUnsupported = errors.New("netpoll: not supported")

// ErrNoData is returned by Watch.TryRead when the connection has nothing
// to read yet.
var ErrNoData = errors.New("netpoll: nothing to read yet")

// Poller watches connections for readability. It is safe for concurrent
// use; its goroutine runs until Close.
type Poller struct {
	fd   int      // the platform's poller (epoll)
	file *os.File // fd, as the runtime polls it; Close closes it
	done chan struct{}

	mu      sync.RWMutex // writes: watches and closed; reads: also the descriptors' use
	next    uint64
	watches map[uint64]*Watch
	closed  bool
}

// ErrClosed is returned by Watch and Watch.Arm after Poller.Close.
var ErrClosed = errors.New("netpoll: poller closed")

// Watch is one connection's registration with a Poller. Arm and Close are
// called by the connection's owner, one at a time.
type Watch struct {
	p     *Poller
	id    uint64
	raw   syscall.RawConn
	ready func()
	added atomic.Bool // registered with the platform's poller
}

// Watch registers c, whose readiness ready is told of once per Arm. ready
// runs on the Poller's goroutine: it must return at once (start a
// goroutine for the work). Nothing is watched until the first Arm.
func (p *Poller) Watch(c net.Conn, ready func()) (*Watch, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("%T has no file descriptor: %w", c, ErrUnsupported)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("netpoll: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	p.next++
	w := &Watch{p: p, id: p.next, raw: raw, ready: ready}
	p.watches[w.id] = w
	return w, nil
}

// fire calls the ready function of the watch id, if it is still watched.
func (p *Poller) fire(id uint64) {
	p.mu.RLock()
	w := p.watches[id]
	p.mu.RUnlock()
	if w != nil {
		w.ready()
	}
}

// Arm asks for one call of ready as soon as the connection has bytes to
// read, is closed by its peer, or fails; at once if it already has. After
// that call the watch is disarmed until the next Arm. An error means ready
// will not be called: the connection is closed, or cannot be watched.
func (w *Watch) Arm() error {
	w.p.mu.RLock()
	defer w.p.mu.RUnlock()
	if w.p.closed {
		return ErrClosed
	}
	var err error
	cerr := w.raw.Control(func(fd uintptr) {
		// Marked before: the event may come, and its reader Arm again,
		// before epoll_ctl returns.
		add := !w.added.Swap(true)
		if err = w.p.arm(int(fd), w.id, add); err != nil && add {
			w.added.Store(false)
		}
	})
	if cerr != nil {
		return fmt.Errorf("netpoll: arm: %w", cerr)
	}
	if err != nil {
		return fmt.Errorf("netpoll: arm: %w", err)
	}
	return nil
}

// Close ends the watch: ready is not called again after Close returns,
// except by a call already under way. The connection leaves the epoll
// instance by itself when it is closed.
func (w *Watch) Close() {
	w.p.mu.Lock()
	delete(w.p.watches, w.id)
	w.p.mu.Unlock()
}
