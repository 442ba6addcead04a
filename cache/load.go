package cache

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"time"
)

// How often a miss looks again for the value another process is loading:
// from pollMin, doubling up to pollMax. Polling costs a waiting process one
// small script per key every pollMax at most, and adds up to pollMax to its
// wait; pub/sub would save that at the price of a subscriber connection.
const (
	pollMin = 2 * time.Millisecond
	pollMax = 25 * time.Millisecond
)

// GetOrLoad returns key's value from the cache, or loads it with load,
// stores it for ttl (plus the stale window of a [Stale] option) under the
// [Tags] given, and returns it.
//
// Concurrent misses for one key in this process share one call of load
// (and the options of the first of them); across processes, the one that
// takes the key's lock in Redis loads while the others wait for its value
// up to Config.LockWait, then load by themselves without storing. A load
// error is returned to every caller sharing the load and nothing is cached.
// An entry whose value is empty (an empty string, list or struct) is a hit.
//
// With [Stale], a value past its TTL but within its stale window is
// returned at once, and a background refresh is started unless one for the
// key is running anywhere; it stores the new value, or logs and counts its
// error and leaves the stale value in place.
//
// The load runs with a context that carries ctx's values but not its
// cancellation, bounded by Config.LoadTimeout: if ctx is done first,
// GetOrLoad returns ctx's error while the load goes on to fill the cache.
// If Redis fails, the value is loaded (once per process) and returned
// without being cached, and the failure is logged and counted.
func (c *Cache[V]) GetOrLoad(ctx context.Context, key string, ttl time.Duration, load func(context.Context) (V, error), opts ...Option) (V, error) {
	var zero V
	if c.isClosed() {
		return zero, ErrClosed
	}
	if ttl <= 0 {
		return zero, fmt.Errorf("cache %s: get or load: ttl %v is not positive", c.cfg.Name, ttl)
	}
	o := collect(opts)
	v, state, err := c.read(ctx, key, o.stale)
	switch {
	case err == nil && state == fresh:
		c.m.hits.Inc()
		return v, nil
	case err == nil:
		c.m.stale.Inc()
		c.startRefresh(ctx, key, ttl, o, load)
		return v, nil
	case ctx.Err() != nil:
		return zero, ctx.Err()
	}
	c.m.misses.Inc() // not found, or Redis failed (counted in read)
	flight := strconv.FormatUint(c.epoch.Load(), 10) + "\x00" + key
	ch := c.flights.DoChan(flight, func() (any, error) {
		if !c.enter() {
			return nil, ErrClosed
		}
		defer c.wg.Done()
		lctx, cancel := c.loadContext(ctx)
		defer cancel()
		return c.loadMiss(lctx, key, ttl, o, load)
	})
	select {
	case <-ctx.Done():
		return zero, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return zero, r.Err
		}
		v, _ := r.Val.(V) // a nil interface V comes back as a nil any
		return v, nil
	}
}

// loadContext returns the context of a load: parent's values, no
// cancellation but Close's, and Config.LoadTimeout.
func (c *Cache[V]) loadContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), c.cfg.LoadTimeout)
	stop := context.AfterFunc(c.done, cancel)
	return ctx, func() { stop(); cancel() }
}

// loadMiss fills a missing entry: it takes the key's lock and loads, or
// waits for the holder's value, polling, up to Config.LockWait.
func (c *Cache[V]) loadMiss(ctx context.Context, key string, ttl time.Duration, o options, load func(context.Context) (V, error)) (V, error) {
	var zero V
	token := rand.Text()
	deadline := time.Now().Add(c.cfg.LockWait)
	pause := pollMin
	for {
		status, raw, err := c.claim(ctx, key, token, -1, o.tags)
		if err != nil {
			if ctx.Err() != nil {
				return zero, fmt.Errorf("cache %s: load: %w", c.cfg.Name, err)
			}
			c.redisFailed(ctx, "claim", key, err)
			return c.loadUnlocked(ctx, load)
		}
		switch status {
		case claimAcquired:
			return c.loadLocked(ctx, key, token, ttl, o, load)
		case claimPresent:
			var v V
			if err := c.cfg.Codec.Unmarshal([]byte(raw), &v); err == nil {
				return v, nil
			}
			// Undecodable: read drops it; the next claim takes the lock.
			if _, _, err := c.read(ctx, key, 0); err != nil && !errors.Is(err, ErrNotFound) {
				return c.loadUnlocked(ctx, load)
			}
			continue
		}
		if !time.Now().Before(deadline) {
			c.log.Warn("cache: another process's load outlasted the lock wait; loading without storing",
				"key", c.logKey(key), "lock_wait", c.cfg.LockWait)
			return c.loadUnlocked(ctx, load)
		}
		if err := sleep(ctx, pause); err != nil {
			return zero, fmt.Errorf("cache %s: waiting for another process's load: %w", c.cfg.Name, err)
		}
		pause = min(2*pause, pollMax)
	}
}

// loadLocked loads with the key's lock held and stores the value. A load
// error releases the lock and is returned.
func (c *Cache[V]) loadLocked(ctx context.Context, key, token string, ttl time.Duration, o options, load func(context.Context) (V, error)) (V, error) {
	var zero V
	c.m.loads.Inc()
	v, err := c.callLocked(ctx, key, token, load)
	if err != nil {
		c.m.loadErrors.Inc()
		c.release(ctx, key, token, o.tags, 0)
		return zero, fmt.Errorf("cache %s: load: %w", c.cfg.Name, err)
	}
	if _, err := c.store(ctx, key, v, ttl+o.stale, token, o.tags); err != nil {
		c.release(ctx, key, token, o.tags, 0)
	}
	return v, nil // stored or not, it is what the source said
}

// loadUnlocked loads without a lock, and so without storing.
func (c *Cache[V]) loadUnlocked(ctx context.Context, load func(context.Context) (V, error)) (V, error) {
	var zero V
	c.m.loads.Inc()
	v, err := call(ctx, load)
	if err != nil {
		c.m.loadErrors.Inc()
		return zero, fmt.Errorf("cache %s: load: %w", c.cfg.Name, err)
	}
	return v, nil
}

// startRefresh starts a background refresh of key unless one is running
// in this process already or the cache is closed.
func (c *Cache[V]) startRefresh(ctx context.Context, key string, ttl time.Duration, o options, load func(context.Context) (V, error)) {
	c.mu.Lock()
	if _, running := c.refreshing[key]; running || c.closed {
		c.mu.Unlock()
		return
	}
	c.refreshing[key] = struct{}{}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		defer func() {
			c.mu.Lock()
			delete(c.refreshing, key)
			c.mu.Unlock()
		}()
		rctx, cancel := c.loadContext(ctx)
		defer cancel()
		c.refresh(rctx, key, ttl, o, load)
	}()
}

// refresh replaces a stale entry, unless another process holds the key's
// lock, the entry became fresh or vanished meanwhile. A failed load keeps
// the lock for Config.RefreshBackoff, so no process retries at once.
func (c *Cache[V]) refresh(ctx context.Context, key string, ttl time.Duration, o options, load func(context.Context) (V, error)) {
	token := rand.Text()
	status, _, err := c.claim(ctx, key, token, o.stale, o.tags)
	if err != nil {
		c.redisFailed(ctx, "claim refresh", key, err)
		return
	}
	if status != claimAcquired {
		return
	}
	c.m.refreshes.Inc()
	v, err := c.callLocked(ctx, key, token, load)
	if err != nil {
		c.m.refreshErrors.Inc()
		c.log.Warn("cache: refresh failed; the stale value stays", "key", c.logKey(key), "err", err,
			"retry_after", c.cfg.RefreshBackoff)
		c.release(ctx, key, token, o.tags, c.cfg.RefreshBackoff)
		return
	}
	if _, err := c.store(ctx, key, v, ttl+o.stale, token, o.tags); err != nil {
		c.release(ctx, key, token, o.tags, 0)
	}
}

// claim runs claimScript: stale < 0 is miss mode, else refresh mode with
// that window.
func (c *Cache[V]) claim(ctx context.Context, key, token string, stale time.Duration, tags []string) (status int64, raw string, err error) {
	keys := append([]string{c.RedisKey(key), c.lockKey(key)}, c.tagKeys(tags)...)
	window := int64(-1)
	if stale >= 0 {
		window = stale.Milliseconds()
	}
	res, err := claimScript.Run(ctx, c.rdb, keys, token, ms(c.cfg.LockTTL), window,
		ms(c.cfg.LoadTimeout+c.cfg.LockTTL)).Slice()
	if err != nil {
		return 0, "", fmt.Errorf("claim %s: %w", c.logKey(key), err)
	}
	status, _ = res[0].(int64)
	if status == claimPresent && len(res) > 1 {
		raw, _ = res[1].(string)
	}
	return status, raw, nil
}

// store encodes v and runs putScript with token ("" for an unconditional
// Set). It reports whether the value was stored; a refused write (the lock
// was revoked or lost) is not an error. Failures are counted and logged.
func (c *Cache[V]) store(ctx context.Context, key string, v V, ttl time.Duration, token string, tags []string) (bool, error) {
	b, err := c.cfg.Codec.Marshal(v)
	if err != nil {
		c.m.codecErrors.Inc()
		c.log.Warn("cache: value does not encode; not stored", "key", c.logKey(key), "err", err)
		return false, fmt.Errorf("encode: %w", err)
	}
	keys := append([]string{c.RedisKey(key), c.lockKey(key)}, c.tagKeys(tags)...)
	n, err := putScript.Run(ctx, c.rdb, keys, b, ms(ttl), token).Int()
	if err != nil {
		c.redisFailed(ctx, "store", key, err)
		return false, fmt.Errorf("store %s: %w", c.logKey(key), err)
	}
	if n == 0 && c.log.Enabled(ctx, slog.LevelDebug) {
		c.log.Debug("cache: load revoked by an invalidation or outlived its lock; not stored", "key", c.logKey(key))
	}
	return n == 1, nil
}

// release gives the key's lock up (after = 0) or keeps it for after more.
func (c *Cache[V]) release(ctx context.Context, key, token string, tags []string, after time.Duration) {
	keys := append([]string{c.lockKey(key)}, c.tagKeys(tags)...)
	arg := int64(0)
	if after > 0 {
		arg = ms(after)
	}
	if err := releaseScript.Run(ctx, c.rdb, keys, token, arg).Err(); err != nil {
		c.redisFailed(ctx, "release lock", key, err)
	}
}

// callLocked calls load while renewing the key's lock every LockTTL/3. The
// renewal stops when load returns or ctx is done (LoadTimeout), or once the
// lock is no longer ours; a load that ignores its context then loses the
// lock and its value is not stored.
func (c *Cache[V]) callLocked(ctx context.Context, key, token string, load func(context.Context) (V, error)) (V, error) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(c.cfg.LockTTL / 3)
		defer t.Stop()
		lock := c.lockKey(key)
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			n, err := extendScript.Run(ctx, c.rdb, []string{lock}, token, ms(c.cfg.LockTTL)).Int()
			if err != nil {
				c.redisFailed(ctx, "renew lock", key, err)
				continue
			}
			if n == 0 {
				return // revoked: the store will be refused
			}
		}
	})
	defer wg.Wait()
	defer close(done)
	return call(ctx, load)
}

// call calls load, turning a panic into an error wrapping ErrLoadPanicked.
func call[V any](ctx context.Context, load func(context.Context) (V, error)) (v V, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v\n%s", ErrLoadPanicked, r, debug.Stack())
		}
	}()
	return load(ctx)
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
