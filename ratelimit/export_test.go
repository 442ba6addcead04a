package ratelimit

import "time"

// MemoryKeys reports how many keys a memory twin holds, for the sweep test.
func MemoryKeys(l any) int {
	switch l := l.(type) {
	case *MemorySlidingWindow:
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.windows)
	case *MemoryTokenBucket:
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.buckets)
	}
	panic("MemoryKeys: not a memory twin")
}

// SetClock replaces the clock that paces c's own beats (concurrency_pace.go).
// Call it before c is used.
func SetClock(c *Concurrency, now func() time.Time) { c.now = now }

// LeaseTokens reports the unspent tokens of key's lease on l, live or not.
func LeaseTokens(l *TokenLease, key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.keys[key]; s != nil {
		return s.tokens
	}
	return 0
}
