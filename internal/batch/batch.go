// Package batch serves many callers with one Redis call: requests for one
// key that arrive while a call for that key is under way wait, and the next
// call carries all of them. At low load every request goes out at once,
// alone; under load the fixed cost of a call (a round trip, a script run)
// is shared. Herald's publishes (events.RedisLog), its session lookups
// (session.Redis), its limiters (ratelimit's token bucket and sliding
// window) and its connection slots (ratelimit.Concurrency) use it.
package batch

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Combiner runs requests for one key together. Its zero value is not
// usable: set Run (and the limits). It is safe for concurrent use. It
// starts up to Concurrency goroutines per key while requests for that key
// wait; once they are served each waits linger for more, then ends, so an
// idle key holds none and a Combiner needs no Close.
type Combiner[Req, Res any] struct {
	// Run serves reqs, all for key, in one call, and returns their results
	// in order, or an error for all of them. Its ctx ends when every
	// caller gave up, or after Timeout.
	Run func(ctx context.Context, key string, reqs []Req) ([]Res, error)

	// Weight is what one request costs of MaxWeight (nil: 1 each).
	Weight func(Req) int

	// MaxWeight bounds one call: more waiting requests wait for the next
	// one. A request heavier than MaxWeight goes alone. Zero: no bound.
	MaxWeight int

	// Timeout bounds one call.
	Timeout time.Duration

	// Concurrency is how many calls for one key may be under way at once
	// (zero: one). More keep a busy key's round trips overlapping; one
	// keeps its calls in order.
	Concurrency int

	mu   sync.Mutex
	keys map[string]*keyState[Req, Res] // keys with requests or goroutines; guarded by mu
}

// linger is how long a goroutine that served every request of its key
// waits for the next before it ends. Under steady load one goroutine then
// serves call after call, instead of a new one per busy spell whose stack
// grows again through the Redis client (runtime.copystack was 2 % of the
// gateway's CPU at 5k HTTP publishes/s, ≈ 5 % in a connect storm).
const linger = 2 * time.Millisecond

// keyState is what a Combiner holds for one key; guarded by its mu.
type keyState[Req, Res any] struct {
	waiting []*call[Req, Res]
	serving int           // goroutines serving the key, lingering ones included
	idle    int           // lingering goroutines not yet woken
	wake    chan struct{} // wakes a lingering goroutine; room for each of them
}

type call[Req, Res any] struct {
	ctx  context.Context
	req  Req
	res  Res
	err  error
	done chan struct{}
}

// Do serves req for key with the requests that wait alongside it and
// returns its result. When ctx ends first it returns ctx's error: a
// request that was still waiting is dropped; one whose call was under way
// may have been served.
func (b *Combiner[Req, Res]) Do(ctx context.Context, key string, req Req) (Res, error) {
	c := &call[Req, Res]{ctx: ctx, req: req, done: make(chan struct{})}
	limit := max(b.Concurrency, 1)
	b.mu.Lock()
	if b.keys == nil {
		b.keys = make(map[string]*keyState[Req, Res])
	}
	ks := b.keys[key]
	if ks == nil {
		ks = &keyState[Req, Res]{wake: make(chan struct{}, limit)}
		b.keys[key] = ks
	}
	ks.waiting = append(ks.waiting, c)
	start := false
	switch {
	case ks.idle > 0:
		ks.idle--
		ks.wake <- struct{}{} // never blocks: there is room for every idle goroutine
	case ks.serving < limit:
		ks.serving++
		start = true
	}
	b.mu.Unlock()
	if start {
		go b.serve(key, ks)
	}
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		var zero Res
		return zero, ctx.Err()
	}
}

// serve makes calls for key until no request waits and none came within
// linger, then ends. Up to Concurrency of them run per key.
func (b *Combiner[Req, Res]) serve(key string, ks *keyState[Req, Res]) {
	var t *time.Timer
	for {
		b.mu.Lock()
		if take := b.takeLocked(ks); len(take) > 0 {
			b.mu.Unlock()
			b.run(key, take)
			continue
		}
		ks.idle++
		b.mu.Unlock()
		if t == nil {
			t = time.NewTimer(linger)
		} else {
			t.Reset(linger)
		}
		select {
		case <-ks.wake:
			continue // Do counted this goroutine busy again
		case <-t.C:
		}
		b.mu.Lock()
		select {
		case <-ks.wake: // woken as the time ran out
			b.mu.Unlock()
			continue
		default:
		}
		ks.idle--
		if ks.serving--; ks.serving == 0 && len(ks.waiting) == 0 {
			delete(b.keys, key) // idle: the next request starts a goroutine
		}
		b.mu.Unlock()
		return
	}
}

// takeLocked takes the next call's requests off ks's queue, in order, up
// to MaxWeight, and ends the requests whose callers gave up.
func (b *Combiner[Req, Res]) takeLocked(ks *keyState[Req, Res]) []*call[Req, Res] {
	var take []*call[Req, Res]
	weight := 0
	rest := ks.waiting[:0]
	for _, c := range ks.waiting {
		w := 1
		if b.Weight != nil {
			w = b.Weight(c.req)
		}
		switch {
		case c.ctx.Err() != nil:
			c.err = c.ctx.Err()
			close(c.done)
		case len(take) == 0 || b.MaxWeight == 0 || weight+w <= b.MaxWeight:
			take = append(take, c)
			weight += w
		default:
			rest = append(rest, c)
		}
	}
	clear(ks.waiting[len(rest):])
	ks.waiting = rest
	if len(rest) == 0 {
		ks.waiting = nil // give the array back
	}
	return take
}

// run makes one call for take and hands every caller its result.
func (b *Combiner[Req, Res]) run(key string, take []*call[Req, Res]) {
	ctxs := make([]context.Context, len(take))
	reqs := make([]Req, len(take))
	for i, c := range take {
		ctxs[i], reqs[i] = c.ctx, c.req
	}
	ctx, cancel := Context(ctxs, b.Timeout)
	defer cancel()
	res, err := b.Run(ctx, key, reqs)
	if err == nil && len(res) != len(take) {
		err = fmt.Errorf("batch: %d results for %d requests", len(res), len(take))
	}
	for i, c := range take {
		if err != nil {
			c.err = err
		} else {
			c.res = res[i]
		}
		close(c.done)
	}
}

// Context returns a context for one call made on behalf of several callers:
// it ends when every one of ctxs has ended (nobody waits for the answer
// any more), or after timeout, or when cancel is called. A caller that
// gives up alone does not end the call for the others.
func Context(ctxs []context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	var remaining atomic.Int64
	remaining.Store(int64(len(ctxs)))
	stops := make([]func() bool, len(ctxs))
	for i, c := range ctxs {
		stops[i] = context.AfterFunc(c, func() {
			if remaining.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}
