// Package ratelimit holds Herald's limiters, shared by every replica through
// Redis, each with an in-memory twin for single-node use and tests:
//
//   - [SlidingWindow]: at most Limit admitted requests per Window, on the
//     classic `ratelimit:{id}` sorted set (score = milliseconds);
//   - [TokenBucket]: Rate tokens per second up to Burst, on the classic
//     `bucket:{id}` hash (fields tokens and lastRefill, in milliseconds);
//     [TokenLease] spends the same bucket through short leases, so that a
//     busy key costs one script call per lease rather than per request;
//   - [Concurrency]: at most max slots held at once per user across all
//     replicas, with leases that free themselves when a replica dies.
//
// The Redis implementations decide in Lua scripts, on the Redis server's
// clock (TIME): callers' clocks are never read, so replicas whose clocks
// disagree still agree. They need Redis 5 or later (effects replication of
// scripts that call TIME). Each script touches one key, so they also work
// on Redis Cluster; concurrent requests share script calls and pipelines
// (on one server a SlidingWindow's call carries every key's requests).
//
// [Middleware] puts a [Limiter] in front of any echo route; [SetHeaders]
// writes the same X-RateLimit-* and Retry-After headers for handlers that
// answer by themselves (a WebSocket upgrade, for instance).
package ratelimit
