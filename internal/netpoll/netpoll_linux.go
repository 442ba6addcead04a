package netpoll

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
	"time"
)

// New returns a Poller with its goroutine running. Close it when done.
//
// The goroutine waits for the epoll instance through Go's own poller (an
// epoll descriptor is itself pollable), so that it is woken like any
// goroutine waiting to read, not from a thread blocked in epoll_wait that
// must win a P back first; and it looks again every sweep whatever it was
// told.
func New() (*Poller, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("netpoll: epoll_create1: %w", err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("netpoll: epoll descriptor: %w", err)
	}
	f := os.NewFile(uintptr(fd), "epoll") // non-blocking: in the runtime's poller
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("netpoll: epoll descriptor: %w", err)
	}
	p := &Poller{fd: fd, file: f, done: make(chan struct{}), watches: make(map[uint64]*Watch)}
	go p.run(f, raw)
	return p, nil
}

// Close stops the Poller's goroutine and waits for it. Watches not yet
// told are never told; Arm fails from now on.
func (p *Poller) Close() {
	p.mu.Lock()
	was := p.closed
	p.closed = true
	p.mu.Unlock()
	if !was {
		p.file.Close() // wakes run, and closes fd once it has returned
	}
	<-p.done
}

// armEvents: readable, or the peer shut its side, or an error; one event
// per Arm. epoll reports a descriptor that is ready when it is armed at
// once, so no readiness falls between a reader's last empty read and its
// Arm.
const armEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

func (p *Poller) arm(fd int, id uint64, add bool) error {
	ev := syscall.EpollEvent{Events: armEvents, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	op := syscall.EPOLL_CTL_MOD
	if add {
		op = syscall.EPOLL_CTL_ADD
	}
	err := syscall.EpollCtl(p.fd, op, fd, &ev)
	switch {
	case add && errors.Is(err, syscall.EEXIST):
		err = syscall.EpollCtl(p.fd, syscall.EPOLL_CTL_MOD, fd, &ev)
	case !add && errors.Is(err, syscall.ENOENT):
		err = syscall.EpollCtl(p.fd, syscall.EPOLL_CTL_ADD, fd, &ev)
	}
	return err
}

// sweep bounds how long run waits before it looks at the epoll instance
// again by itself: a readiness notification the runtime's poller missed
// costs a parked reader this much at most.
const sweep = 20 * time.Millisecond

// run waits for events and tells their watches, until Close.
func (p *Poller) run(f *os.File, raw syscall.RawConn) {
	defer close(p.done)
	events := make([]syscall.EpollEvent, 128)
	for {
		var n int
		var err error
		f.SetReadDeadline(time.Now().Add(sweep))
		rerr := raw.Read(func(fd uintptr) bool {
			n, err = syscall.EpollWait(int(fd), events, 0)
			return n > 0 || (err != nil && err != syscall.EINTR)
		})
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			rerr = nil
		}
		if rerr != nil {
			p.mu.RLock()
			closed := p.closed
			p.mu.RUnlock()
			if !closed {
				slog.Error("netpoll: waiting for the epoll instance failed; idle connections are no longer watched", "err", rerr)
			}
			return
		}
		if err != nil {
			// Only a broken epoll descriptor fails here.
			slog.Error("netpoll: epoll_wait failed; idle connections are no longer watched", "err", err)
			return
		}
		for _, ev := range events[:n] {
			p.fire(uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32)
		}
	}
}

// TryRead reads what the connection has already received, without
// waiting: ErrNoData if that is nothing, io.EOF once the peer has closed
// its side.
func (w *Watch) TryRead(b []byte) (int, error) {
	var n int
	var err error
	cerr := w.raw.Read(func(fd uintptr) bool {
		for {
			n, err = syscall.Read(int(fd), b)
			if err != syscall.EINTR {
				return true // never wait
			}
		}
	})
	switch {
	case cerr != nil:
		return 0, cerr
	case err == syscall.EAGAIN:
		return 0, ErrNoData
	case err != nil:
		return 0, fmt.Errorf("netpoll: read: %w", err)
	case n == 0 && len(b) > 0:
		return 0, io.EOF
	}
	return n, nil
}
