// Package batch holds what the places that serve many callers with one
// Redis call share: Herald's publishes (events.RedisLog) and its token
// bucket (ratelimit.TokenBucket) decide the calls that wait while one is
// under way together, in the next one.
package batch

import (
	"context"
	"sync/atomic"
	"time"
)

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
