package ratelimit

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// MemorySlidingWindow is the in-memory twin of [SlidingWindow] for a single
// process: the same decisions, at millisecond resolution, on an injected
// clock. It is safe for concurrent use; memory is bounded by the keys seen
// in the last window.
type MemorySlidingWindow struct {
	cfg SlidingWindowConfig
	now func() time.Time

	mu      sync.Mutex
	windows map[string][]int64 // guarded by mu; admitted times, ms, ascending
	sweepAt int                // guarded by mu; len(windows) that triggers a sweep
}

var _ Limiter = (*MemorySlidingWindow)(nil)

// NewMemorySlidingWindow returns an in-memory sliding window reading time
// from now (nil: time.Now). cfg.Prefix is ignored. It reports an error
// wrapping ErrInvalidArgument for a bad cfg.
func NewMemorySlidingWindow(cfg SlidingWindowConfig, now func() time.Time) (*MemorySlidingWindow, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("ratelimit: %w", err)
	}
	if now == nil {
		now = time.Now
	}
	return &MemorySlidingWindow{cfg: cfg, now: now, windows: make(map[string][]int64), sweepAt: minSweep}, nil
}

// Allow behaves as [SlidingWindow.Allow]; it fails only when ctx is done.
func (w *MemorySlidingWindow) Allow(ctx context.Context, key string) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("ratelimit: sliding window: %w", err)
	}
	now := w.now().UnixMilli()
	window := w.cfg.Window.Milliseconds()
	limit := w.cfg.Limit

	w.mu.Lock()
	defer w.mu.Unlock()
	w.sweepLocked(now, window)
	times := expire(w.windows[key], now-window)
	count := len(times)
	allowed := count < limit
	if allowed {
		i, _ := slices.BinarySearch(times, now+1) // after equal times, as ZADD orders by member
		times = slices.Insert(times, i, now)
		count++
	}
	if count == 0 {
		delete(w.windows, key)
	} else {
		w.windows[key] = times
	}
	var reset, retry int64
	if count > 0 {
		reset = times[0] + window - now
	}
	if !allowed {
		retry = times[count-limit] + window - now
	}
	return windowResult(allowed, limit, int64(count), reset, retry), nil
}

// expire drops the times at or before cutoff, as ZREMRANGEBYSCORE -inf
// cutoff, in place so that the slice keeps its capacity.
func expire(times []int64, cutoff int64) []int64 {
	i, _ := slices.BinarySearch(times, cutoff+1)
	if i == 0 {
		return times
	}
	return times[:copy(times, times[i:])]
}

// minSweep is the map size under which the memory twins never sweep.
const minSweep = 1024

// sweepLocked forgets keys whose every entry left the window, once the map
// has doubled since the last sweep, so that idle keys cost amortised O(1).
func (w *MemorySlidingWindow) sweepLocked(now, window int64) {
	if len(w.windows) < w.sweepAt {
		return
	}
	for k, times := range w.windows {
		if times[len(times)-1] <= now-window {
			delete(w.windows, k)
		}
	}
	w.sweepAt = max(minSweep, 2*len(w.windows))
}
