package cache

import "github.com/redis/go-redis/v9"

// The scripts below are the only writers of a cache's keys (see keys.go for
// the layout). Each one is atomic, and each is safe to run twice: go-redis
// retries a command whose connection failed even when it had reached Redis.
//
// A lock doubles as a lease: only a writer whose token is still in the lock
// key when it writes may store what it loaded, and every invalidation that
// covers a key deletes that key's lock. So a value loaded before an
// invalidation is never stored after it.

// Results of claimScript.
const (
	claimAcquired = 0 // the caller now holds the lock: load and store
	claimPresent  = 1 // (miss mode) an entry exists: its value is returned
	claimFresh    = 2 // (refresh mode) the entry is fresh again: nothing to do
	claimGone     = 3 // (refresh mode) the entry is gone: nothing to refresh
	claimBusy     = 4 // another caller holds the lock
)

// claimScript looks for the entry and, when the caller should load it,
// takes the key's lock. In miss mode (ARGV[3] = -1) an existing entry is
// returned instead. In refresh mode (ARGV[3] = the stale window) the lock is
// taken only while the entry still exists and is still stale, so a refresh
// that finished a moment ago is not repeated. The lock key is added to the
// tag sets, so that invalidating a tag revokes loads in flight too. Taking a
// lock the caller already holds (a retried command) succeeds again.
//
// KEYS[1] entry, KEYS[2] lock, KEYS[3..] tag sets
// ARGV[1] token, ARGV[2] lock ttl ms, ARGV[3] -1 or stale window ms,
// ARGV[4] minimum tag set ttl ms (outlives any load)
// Returns {status} or {claimPresent, value}.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
local stale = tonumber(ARGV[3])
if v then
  if stale < 0 then return {1, v} end
  local p = redis.call('PTTL', KEYS[1])
  if p == -1 or p > stale then return {2} end
elseif stale >= 0 then
  return {3}
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {4} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local keep = tonumber(ARGV[4])
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[2])
  if redis.call('PTTL', KEYS[i]) < keep then redis.call('PEXPIRE', KEYS[i], keep) end
end
return {0}
`)

// putScript stores an entry and records it in its tag sets. With a token it
// stores only while the caller still holds the lock (else returns 0: the
// load was revoked by an invalidation, or outlived its lock); without one
// (Set) it stores unconditionally and revokes any load in flight. Either way
// the lock is released. Each tag set lives as long as its longest-lived
// entry, and each write drops up to two members of a tag set that no longer
// exist, so sets do not grow with entries that expired on their own.
//
// KEYS[1] entry, KEYS[2] lock, KEYS[3..] tag sets
// ARGV[1] value, ARGV[2] entry ttl ms, ARGV[3] token or ""
// Returns 1 when stored, 0 when refused.
var putScript = redis.NewScript(`
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ttl = tonumber(ARGV[2])
for i = 3, #KEYS do
  local set = KEYS[i]
  redis.call('SREM', set, KEYS[2])
  redis.call('SADD', set, KEYS[1])
  if redis.call('PTTL', set) < ttl then redis.call('PEXPIRE', set, ttl) end
  for _, m in ipairs(redis.call('SRANDMEMBER', set, 2)) do
    if redis.call('EXISTS', m) == 0 then redis.call('SREM', set, m) end
  end
end
return 1
`)

// releaseScript gives up a lock the caller holds (compare-and-delete): with
// ARGV[2] = 0 it deletes the lock and its tag set memberships; with
// ARGV[2] > 0 it keeps the lock that many ms longer, so that a failing
// source is not asked again at once (refresh backoff).
//
// KEYS[1] lock, KEYS[2..] tag sets; ARGV[1] token, ARGV[2] ms
// Returns 1 when the caller held the lock, else 0.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
  for i = 2, #KEYS do redis.call('SREM', KEYS[i], KEYS[1]) end
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
`)

// extendScript keeps a lock the caller holds for ARGV[2] ms more.
//
// KEYS[1] lock; ARGV[1] token, ARGV[2] ms. Returns 1, or 0 when the lock is
// no longer the caller's.
var extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
`)

// deleteScript removes entries and revokes the loads in flight for them.
//
// KEYS[2i-1] entry, KEYS[2i] its lock. Returns how many entries existed.
var deleteScript = redis.NewScript(`
local n = 0
for i = 1, #KEYS, 2 do
  n = n + redis.call('UNLINK', KEYS[i])
  redis.call('UNLINK', KEYS[i + 1])
end
return n
`)

// invalidateTagsScript removes every member of the tag sets (entries, and
// the locks of loads in flight, which revokes them) and the sets
// themselves, in one atomic step: a write either ran before it, and its
// entry is removed, or runs after it, and (when it comes from a load that
// claimed its lock before) is refused.
//
// KEYS tag sets; ARGV[1] the prefix of entry keys.
// Returns how many entries were removed.
var invalidateTagsScript = redis.NewScript(`
local prefix = ARGV[1]
local entries, locks = {}, {}
for i = 1, #KEYS do
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    if string.sub(m, 1, #prefix) == prefix then
      entries[#entries + 1] = m
    else
      locks[#locks + 1] = m
    end
  end
end
local function unlink(keys)
  local n = 0
  for j = 1, #keys, 1000 do
    n = n + redis.call('UNLINK', unpack(keys, j, math.min(j + 999, #keys)))
  end
  return n
end
unlink(locks)
local n = unlink(entries)
redis.call('UNLINK', unpack(KEYS))
return n
`)
