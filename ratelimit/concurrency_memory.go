package ratelimit

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
)

// MemoryConcurrency is the in-memory twin of [Concurrency] for a single
// process. Its leases never expire: they live exactly as long as the
// process that holds them. It is safe for concurrent use.
type MemoryConcurrency struct {
	cfg ConcurrencyConfig

	mu    sync.Mutex
	users map[string]map[string]struct{} // guarded by mu; user → members; no empty sets
}

// NewMemoryConcurrency returns an in-memory concurrency limiter. Of cfg it
// uses RetryAfter only. It reports an error wrapping ErrInvalidArgument for
// a bad cfg.
func NewMemoryConcurrency(cfg ConcurrencyConfig) (*MemoryConcurrency, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	return &MemoryConcurrency{cfg: cfg, users: make(map[string]map[string]struct{})}, nil
}

// Acquire behaves as [Concurrency.Acquire]; besides a bad limit it fails
// only when ctx is done.
func (c *MemoryConcurrency) Acquire(ctx context.Context, user string, limit int) (Lease, Result, error) {
	if err := checkLimit(limit); err != nil {
		return Lease{}, Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Lease{}, Result{}, fmt.Errorf("ratelimit: concurrency acquire: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	set := c.users[user]
	if len(set) >= limit {
		return Lease{}, concResult(false, limit, int64(len(set)), c.cfg.RetryAfter), nil
	}
	if set == nil {
		set = make(map[string]struct{})
		c.users[user] = set
	}
	l := Lease{user: user, id: rand.Text()}
	set[l.id] = struct{}{}
	return l, concResult(true, limit, int64(len(set)), c.cfg.RetryAfter), nil
}

// Release frees the lease's slot. Releasing a lease twice, or the zero
// Lease, is a no-op. It never fails.
func (c *MemoryConcurrency) Release(_ context.Context, l Lease) error {
	if l.id == "" {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	set := c.users[l.user]
	delete(set, l.id)
	if len(set) == 0 {
		delete(c.users, l.user)
	}
	return nil
}
