//go:build !linux

package netpoll

// New reports ErrUnsupported: only Linux has a poller here.
func New() (*Poller, error) { return nil, ErrUnsupported }

// Close does nothing.
func (p *Poller) Close() {}

func (p *Poller) arm(fd int, id uint64, add bool) error { return ErrUnsupported }

// TryRead reports ErrUnsupported.
func (w *Watch) TryRead(b []byte) (int, error) { return 0, ErrUnsupported }
