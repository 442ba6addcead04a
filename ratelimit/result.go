package ratelimit

import (
	"context"
	"errors"
	"time"
)

// Result is the outcome of one limiter decision. It is the same for every
// limiter of this package, so that one header writer serves them all.
type Result struct {
	// Allowed reports whether the request was admitted. A refused request
	// consumed nothing.
	Allowed bool
	// Limit is the most a key may have: requests per window, bucket
	// capacity (burst) or concurrent slots.
	Limit int
	// Remaining is how much is left after this decision: requests that
	// would still be admitted now, whole tokens, or free slots. Never
	// negative.
	Remaining int
	// Reset is how long until Remaining next grows on its own: the oldest
	// counted request leaves the window, or the next whole token drips in.
	// It is zero when nothing is due to free on a schedule: a full bucket,
	// or admitted concurrency slots, which free when their holders release
	// them. A refused concurrency slot gets the RetryAfter hint here too.
	Reset time.Duration
	// RetryAfter is zero when Allowed. When refused it is how long until
	// the same request could be admitted, at least one millisecond; for
	// the concurrency limiter it is a configured hint.
	RetryAfter time.Duration
}

// Limiter decides whether a request identified by key may proceed. Both
// [SlidingWindow] and [TokenBucket] (and their memory twins) implement it.
// Implementations are safe for concurrent use, and return an error, never
// a Result that admits, when they cannot decide.
type Limiter interface {
	Allow(ctx context.Context, key string) (Result, error)
}

// ErrInvalidArgument is wrapped by the errors a constructor returns for a
// bad configuration, and by calls with an out-of-range cost or maximum.
var ErrInvalidArgument = errors.New("ratelimit: invalid argument")

// ms converts milliseconds from a script or a clock to a Duration.
func ms(n int64) time.Duration { return time.Duration(n) * time.Millisecond }
