package netpoll

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"syscall"
)

// New returns a Poller with its goroutine running. Close it when done.
func New() (*Poller, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("netpoll: epoll_create1: %w", err)
	}
	p := &Poller{fd: fd, watches: make(map[uint64]*Watch), done: make(chan struct{})}
	if err := syscall.Pipe2(p.stop[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("netpoll: pipe: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN} // id 0
	if err := syscall.EpollCtl(fd, syscall.EPOLL_CTL_ADD, p.stop[0], &ev); err != nil {
		p.closeFDs()
		return nil, fmt.Errorf("netpoll: epoll_ctl: %w", err)
	}
	go p.run()
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
		syscall.Write(p.stop[1], []byte{0})
	}
	<-p.done
}

func (p *Poller) closeFDs() {
	syscall.Close(p.fd)
	syscall.Close(p.stop[0])
	syscall.Close(p.stop[1])
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

func (p *Poller) remove(fd int) {
	_ = syscall.EpollCtl(p.fd, syscall.EPOLL_CTL_DEL, fd, nil)
}

// run waits for events and tells their watches, until Close.
func (p *Poller) run() {
	defer close(p.done)
	defer p.closeFDs()
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(p.fd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			// Only a broken epoll descriptor fails here; the watched
			// connections would never be told again.
			slog.Error("netpoll: epoll_wait failed; idle connections are no longer watched", "err", err)
			return
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == 0 {
				return // Close
			}
			p.fire(id)
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
