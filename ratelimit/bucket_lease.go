package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/heraldgw/herald/internal/batch"
)

// MaxLeaseLife bounds TokenLease's lease life: the longest a replica may
// hold tokens of a shared bucket that another replica's request then
// cannot have.
const MaxLeaseLife = 250 * time.Millisecond

// TokenLease is a [TokenBucket] that takes a busy key's budget from Redis
// in chunks: when a request finds no lease, the script call that decides
// it also takes a lease of as many tokens as the key spent on this
// replica in one lease life lately (at most half the burst), which later
// requests spend here, without a round trip, until they run out or the
// lease life ends. Unspent tokens are not returned: they expire, which can
// only make the limit stricter. A key requested now and then gets no
// lease and costs one script call per request, as with TokenBucket.
//
// What it guarantees, across every replica that shares the bucket (an app
// running the classic bucket:{id} snippet on the same hash spends the same
// tokens, by its own arithmetic):
//
//   - It never admits more than Rate and Burst allow. Tokens leave the
//     shared bucket before they are spent, and the script burns what the
//     bucket would refill beyond Burst while a lease is out (after a grant
//     of g, tokens + g + Rate × life ≤ Burst), so admissions at the moments
//     they happen form a sequence the bucket itself would admit.
//   - A request is refused only when its replica's lease cannot pay for it
//     and the shared bucket holds fewer than n tokens: tokens leased to
//     other replicas, and burnt ones, are missing for at most the lease
//     life (≤ MaxLeaseLife), and burning lowers the bucket by at most
//     Rate × life below Burst. Refusals come with RetryAfter from the
//     bucket, as TokenBucket's do.
//   - Result.Remaining of a request paid from a lease is the whole tokens
//     the shared bucket held after this replica's last script call for the
//     key (at most a lease life ago), plus this replica's unspent leased
//     tokens, at most Burst; Reset is that call's. Requests decided in
//     Redis get TokenBucket's figures.
//
// The lease life is measured on the local monotonic clock from before the
// script call is sent, so it ends here no later than the script's own
// reckoning. It is safe for concurrent use.
type TokenLease struct {
	bucket *TokenBucket
	life   time.Duration // lease life: Config.Life, or less for a small burst
	now    func() time.Time
	calls  batch.Combiner[int, leaseResult]

	mu      sync.Mutex
	keys    map[string]*leaseState // guarded by mu
	sweepAt int                    // guarded by mu
}

// leaseState is one key's lease on this replica, and its recent demand.
type leaseState struct {
	tokens  int       // unspent leased tokens
	expires time.Time // when they may no longer be spent
	left    int       // whole tokens of the shared bucket after the last script call
	reset   time.Duration
	since   time.Time // start of the demand count: the last script call
	asked   int       // tokens asked for since
}

type leaseResult struct {
	res Result
	err error
}

var _ Limiter = (*TokenLease)(nil)

// NewTokenLease returns a token bucket on b's Redis and configuration that
// leases tokens for life, at most MaxLeaseLife, and never longer than the
// bucket takes to refill a quarter of its burst (so that burning makes
// room for a lease even from a full bucket). now is the local clock (nil:
// time.Now); the bucket's own arithmetic stays on Redis's clock. A life
// ≤ 0 or > MaxLeaseLife is an error wrapping ErrInvalidArgument.
func NewTokenLease(b *TokenBucket, life time.Duration, now func() time.Time) (*TokenLease, error) {
	if life <= 0 || life > MaxLeaseLife {
		return nil, fmt.Errorf("ratelimit: lease life %v outside (0, %v]: %w", life, MaxLeaseLife, ErrInvalidArgument)
	}
	if now == nil {
		now = time.Now
	}
	quarter := time.Duration(float64(b.cfg.Burst) / 4 / b.cfg.Rate * float64(time.Second))
	l := &TokenLease{
		bucket: b, life: min(life, quarter).Truncate(time.Millisecond), now: now,
		keys: make(map[string]*leaseState), sweepAt: minSweep,
	}
	l.calls = batch.Combiner[int, leaseResult]{Run: l.run, MaxWeight: maxBucketBatch, Timeout: bucketCallTimeout}
	return l, nil
}

// Key returns the Redis key that holds key's bucket.
func (l *TokenLease) Key(key string) string { return l.bucket.Key(key) }

// Allow is AllowN(ctx, key, 1).
func (l *TokenLease) Allow(ctx context.Context, key string) (Result, error) {
	return l.AllowN(ctx, key, 1)
}

// AllowN spends n tokens of key's budget, from this replica's lease when
// it holds n, else in Redis as [TokenBucket.AllowN] does; a refused
// request spends nothing. n must be within 1..Burst, or the error wraps
// ErrInvalidArgument. Errors come with a zero Result.
func (l *TokenLease) AllowN(ctx context.Context, key string, n int) (Result, error) {
	if err := l.bucket.cfg.checkCost(n); err != nil {
		return Result{}, err
	}
	l.mu.Lock()
	r, ok := l.spendLocked(l.keys[key], n, l.now())
	l.mu.Unlock()
	if ok {
		return r, nil
	}
	lr, err := l.calls.Do(ctx, key, n)
	if err == nil {
		err = lr.err
	}
	if err != nil {
		return Result{}, fmt.Errorf("ratelimit: token bucket: %w", err)
	}
	return lr.res, nil
}

// spendLocked pays n from s's lease if it is live and holds n.
func (l *TokenLease) spendLocked(s *leaseState, n int, now time.Time) (Result, bool) {
	if s == nil || s.tokens < n || !now.Before(s.expires) {
		return Result{}, false
	}
	s.tokens -= n
	s.asked += n
	burst := l.bucket.cfg.Burst
	return Result{Allowed: true, Limit: burst, Remaining: min(burst, s.left+s.tokens), Reset: s.reset}, true
}

// run decides the requests ns of key that found no lease: those a lease
// granted while they waited pays for here, the others in one script call
// that also takes the key's next lease.
func (l *TokenLease) run(ctx context.Context, key string, ns []int) ([]leaseResult, error) {
	out := make([]leaseResult, len(ns))
	start := l.now()
	l.mu.Lock()
	s := l.stateLocked(key, start)
	var pending []int // indexes into ns
	asked := 0
	for i, n := range ns {
		if r, ok := l.spendLocked(s, n, start); ok {
			out[i].res = r
			continue
		}
		pending = append(pending, i)
		asked += n
	}
	if len(pending) == 0 {
		l.mu.Unlock()
		return out, nil
	}
	want := l.wantLocked(s, asked, start)
	l.mu.Unlock()

	reqs := make([]int, len(pending))
	for j, i := range pending {
		reqs[j] = ns[i]
	}
	res, g, err := l.bucket.script(ctx, key, reqs, want, l.life)
	if err != nil {
		for _, i := range pending {
			out[i].err = err
		}
		return out, nil
	}
	for j, i := range pending {
		out[i].res = res[j]
	}
	l.mu.Lock()
	// A new lease replaces the old, whose unspent tokens (too few for a
	// request) expire with it.
	s.tokens, s.expires, s.left, s.reset = g.tokens, start.Add(l.life), g.left, g.reset
	l.mu.Unlock()
	return out, nil
}

// wantLocked is the lease to ask for: the tokens key was asked for on
// this replica since its last script call (asked more now), scaled to one
// lease life, at most half the burst. It starts the next count.
func (l *TokenLease) wantLocked(s *leaseState, asked int, now time.Time) int {
	want := 0
	if elapsed := now.Sub(s.since); !s.since.IsZero() && elapsed > 0 {
		want = int(float64(s.asked+asked) * float64(l.life) / float64(elapsed))
	}
	s.since, s.asked = now, 0
	return min(want, l.bucket.cfg.Burst/2)
}

// stateLocked returns key's state, made if missing.
func (l *TokenLease) stateLocked(key string, now time.Time) *leaseState {
	s, ok := l.keys[key]
	if !ok {
		l.sweepLocked(now)
		s = &leaseState{}
		l.keys[key] = s
	}
	return s
}

// sweepLocked forgets keys without a live lease and idle for ten lease
// lives (their demand is stale), once the map has doubled since the last
// sweep.
func (l *TokenLease) sweepLocked(now time.Time) {
	if len(l.keys) < l.sweepAt {
		return
	}
	for k, s := range l.keys {
		if !now.Before(s.expires) && now.Sub(s.since) > 10*l.life {
			delete(l.keys, k)
		}
	}
	l.sweepAt = max(minSweep, 2*len(l.keys))
}
