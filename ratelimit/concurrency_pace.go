package ratelimit

import "time"

// processClock is Concurrency's clock by default: the process's clock,
// whose monotonic reading measures how long ago this instance sent its
// newest confirmed beat, so that an Acquire right after one skips its
// own (Concurrency.Acquire), as Run's ticker paces the beats. It never
// decides a limit, and no other replica's clock is compared with it:
// slots and heartbeats expire on Redis's clock (TIME). It is the only
// reading of the local clock in the Redis limiters, kept in a file of its
// own so that TestRedisLimitersReadNoLocalClock guards the rest.
func processClock() time.Time { return time.Now() }
