// Package cache is a Redis cache for values of one Go type, shared by every
// process that uses the same Redis and namespace. It implements the classic
// Redis caching patterns without their well-known flaws:
//
//   - Cache-aside ([Cache.GetOrLoad]): concurrent misses for one key in one
//     process call the load function once (singleflight); across processes
//     a short lock in Redis lets one process load while the others wait for
//     its value. A load error is returned to the callers and never cached;
//     an entry holding an empty value is a hit like any other.
//   - Stale-while-revalidate ([Stale]): past its fresh TTL an entry is
//     served for a further stale window while one background refresh per
//     key, across all processes, replaces it. A failed refresh is logged and
//     counted, and the stale value stays.
//   - Invalidation by key ([Cache.Delete]), by tag ([Tags],
//     [Cache.InvalidateTags]: one atomic script; no write racing with it
//     leaves a tagged entry behind) and by pattern ([Cache.InvalidatePattern]:
//     SCAN and UNLINK in batches, never KEYS).
//
// Every lock is also a lease: a process stores what it loaded only if its
// lock is still intact, and an invalidation by key or tag deletes the locks
// of the keys it covers, atomically with their entries. A value read from
// the source before such an invalidation therefore never lands in the cache
// after it. (An invalidation by pattern is a sweep over the keyspace: it
// revokes the loads it comes across, but an entry stored while it runs may
// survive it.)
//
// The package works with a single Redis server, a Sentinel-managed one, or
// a Redis Cluster. Its scripts touch several keys of one cache (an entry,
// its lock, its tag sets), so on a cluster every key of a cache lives in
// one hash slot: the namespace carries a hash tag (the default does), and
// one cache is served by one shard. Spread load over several caches.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"
)

// ErrNotFound is returned by [Cache.Get] when the key has no entry.
var ErrNotFound = errors.New("cache: not found")

// ErrClosed is returned by the methods of a [Cache] after [Cache.Close].
var ErrClosed = errors.New("cache: closed")

// ErrLoadPanicked wraps the value of a load function's panic, which the
// cache recovers and returns (or, for a refresh, logs) as an error.
var ErrLoadPanicked = errors.New("cache: load panicked")

// Config holds the settings of a [Cache]. Only Name is required.
type Config[V any] struct {
	// Name identifies the cache: the value of the "cache" label of its
	// metrics, and part of its default Namespace. 1 to 64 characters of
	// [A-Za-z0-9_.-]. Required.
	Name string

	// Namespace is the prefix of every Redis key the cache owns. Entries are
	// "{Namespace}:v:{key}", locks "{Namespace}:l:{key}", tag sets
	// "{Namespace}:t:{tag}". Caches of different types must not share one.
	// Default "herald:cache:" followed by Name; on a Redis Cluster (a
	// *redis.ClusterClient) Name in braces, "herald:cache:{Name}", a hash
	// tag that keeps the cache in one slot. A Namespace given for a
	// cluster must contain such a tag ("{…}", not empty).
	Namespace string

	// Codec encodes values for Redis. Default [JSON].
	Codec Codec[V]

	// Logger receives failed refreshes and Redis errors. Default: discard.
	Logger *slog.Logger

	// LogKeys logs cache keys as they are. By default a log line carries only
	// a short SHA-256 fingerprint of the key, since keys may hold user or
	// session ids.
	LogKeys bool

	// LockTTL is how long a load's lock lasts unless renewed; the loader
	// renews it every LockTTL/3 while its load runs, so it only bounds how
	// long a crashed loader blocks others. Default 5 s.
	LockTTL time.Duration

	// LockWait is how long a miss waits for another process's load of the
	// same key before it loads by itself (and then does not store what it
	// loaded: only the lock holder writes). Longer means fewer duplicate
	// loads when the source is slow; shorter means a lower worst-case
	// latency for a miss stuck behind a slow loader. Default 5 s.
	LockWait time.Duration

	// LoadTimeout bounds one load, and its lock with it. Loads run detached
	// from the caller's cancellation (the callers that share the load may
	// each give up; the load goes on and fills the cache). Default 30 s.
	LoadTimeout time.Duration

	// RefreshBackoff is how long after a failed background refresh no
	// process refreshes that key again. Default 1 s.
	RefreshBackoff time.Duration

	// ScanCount is the COUNT hint of each SCAN of [Cache.InvalidatePattern],
	// and so about how many keys one UNLINK removes. Default 1000.
	ScanCount int
}

var validName = regexp.MustCompile(`^[A-Za-z0-9_.\-]{1,64}$`)

func (c *Config[V]) setDefaults(cluster bool) error {
	if !validName.MatchString(c.Name) {
		return fmt.Errorf("cache: name %q: want 1 to 64 of [A-Za-z0-9_.-]", c.Name)
	}
	switch {
	case c.Namespace == "" && cluster:
		c.Namespace = "herald:cache:{" + c.Name + "}"
	case c.Namespace == "":
		c.Namespace = "herald:cache:" + c.Name
	case cluster && !hashTagged(c.Namespace):
		return fmt.Errorf("cache %s: namespace %q has no hash tag: on a Redis Cluster every key of a cache must hash to one slot; put a part of it in braces, as in herald:cache:{%s}", c.Name, c.Namespace, c.Name)
	}
	if c.Codec == nil {
		c.Codec = JSON[V]{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.LockTTL <= 0 {
		c.LockTTL = 5 * time.Second
	}
	if c.LockTTL < 3*time.Millisecond {
		c.LockTTL = 3 * time.Millisecond // renewed every LockTTL/3
	}
	if c.LockWait <= 0 {
		c.LockWait = 5 * time.Second
	}
	if c.LoadTimeout <= 0 {
		c.LoadTimeout = 30 * time.Second
	}
	if c.RefreshBackoff <= 0 {
		c.RefreshBackoff = time.Second
	}
	if c.ScanCount <= 0 {
		c.ScanCount = 1000
	}
	return nil
}

// hashTagged reports whether Redis Cluster hashes key by a tag: the text
// between its first "{" and the next "}", when not empty.
func hashTagged(key string) bool {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return false
	}
	j := strings.IndexByte(key[i+1:], '}')
	return j > 0
}

// Option modifies one write: the entry a GetOrLoad or Set stores.
type Option func(*options)

type options struct {
	stale time.Duration
	tags  []string
}

// Stale gives the entry a stale window: once its TTL has passed, it is
// served for up to window more while one background refresh (across all
// processes) loads a new value. Reads of the key should all pass the same
// window: freshness is judged by the reader's window against the entry's
// remaining time to live.
func Stale(window time.Duration) Option {
	return func(o *options) { o.stale = max(window, 0) }
}

// Tags records the entry under each tag, for [Cache.InvalidateTags]. The
// tags of an entry are recorded by the write that stores it, atomically
// with it.
func Tags(tags ...string) Option {
	return func(o *options) { o.tags = append(o.tags, tags...) }
}

// Cache is a Redis cache of values of type V. It is safe for concurrent
// use. It does not own the Redis client; [Cache.Close] stops its background
// refreshes.
type Cache[V any] struct {
	rdb   redis.UniversalClient
	cfg   Config[V]
	log   *slog.Logger
	m     *metrics
	entry string // prefix of entry keys: Namespace + ":v:"
	lock  string // prefix of lock keys
	tag   string // prefix of tag sets

	flights singleflight.Group // misses being loaded, by epoch and key
	// epoch grows with every Delete, Set and invalidation: a caller that
	// comes after one never joins a load that started before it (that
	// load's value is not stored, and must not be handed out either).
	epoch atomic.Uint64

	done   context.Context // cancelled by Close; stops loads and refreshes
	cancel context.CancelFunc

	mu         sync.Mutex // guards closed, refreshing and wg.Add
	closed     bool
	refreshing map[string]struct{} // keys with a background refresh running here
	wg         sync.WaitGroup      // loads and refreshes running

	lastRedisLog atomic.Int64 // unix ns of the last Redis error logged
}

// New returns a cache of V values in rdb, a single-node, failover or
// cluster client, with its counters registered on reg (nil: not registered). Several caches
// may register on one registry: they share the metric vectors, each under
// its own "cache" label. New fails on an invalid name or a registry that
// holds different metrics under the cache metrics' names.
func New[V any](rdb redis.UniversalClient, reg prometheus.Registerer, cfg Config[V]) (*Cache[V], error) {
	_, cluster := rdb.(*redis.ClusterClient)
	if err := cfg.setDefaults(cluster); err != nil {
		return nil, err
	}
	m, err := newMetrics(reg, cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", cfg.Name, err)
	}
	done, cancel := context.WithCancel(context.Background())
	return &Cache[V]{
		rdb:        rdb,
		cfg:        cfg,
		log:        cfg.Logger.With("cache", cfg.Name),
		m:          m,
		entry:      cfg.Namespace + ":v:",
		lock:       cfg.Namespace + ":l:",
		tag:        cfg.Namespace + ":t:",
		done:       done,
		cancel:     cancel,
		refreshing: map[string]struct{}{},
	}, nil
}

// RedisKey returns the Redis key that holds key's entry.
func (c *Cache[V]) RedisKey(key string) string { return c.entry + key }

func (c *Cache[V]) lockKey(key string) string { return c.lock + key }

func (c *Cache[V]) tagKeys(tags []string) []string {
	keys := make([]string, len(tags))
	for i, t := range tags {
		keys[i] = c.tag + t
	}
	return keys
}

// Close stops the background refreshes and the loads no caller waits for,
// and waits for them to return. Later calls of any method return
// [ErrClosed]. Close does not close the Redis client. It always returns nil.
func (c *Cache[V]) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return nil
}

// enter registers a goroutine doing work for the cache, or reports false
// once the cache is closed. The caller calls c.wg.Done when finished.
func (c *Cache[V]) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	return true
}

func (c *Cache[V]) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Get returns key's entry, fresh or stale, or [ErrNotFound]. An entry that
// cannot be decoded is deleted and reported as not found. It counts a hit
// or a miss.
func (c *Cache[V]) Get(ctx context.Context, key string) (V, error) {
	var zero V
	if c.isClosed() {
		return zero, ErrClosed
	}
	v, _, err := c.read(ctx, key, 0)
	switch {
	case err == nil:
		c.m.hits.Inc()
		return v, nil
	case errors.Is(err, ErrNotFound):
		c.m.misses.Inc()
		return zero, ErrNotFound
	default:
		return zero, fmt.Errorf("cache %s: get: %w", c.cfg.Name, err)
	}
}

// Set stores v under key for ttl (plus the stale window of a [Stale]
// option), recording it under its [Tags]. It replaces any entry and revokes
// any load of the key in flight, so a value loaded before the Set never
// overwrites it.
func (c *Cache[V]) Set(ctx context.Context, key string, v V, ttl time.Duration, opts ...Option) error {
	if c.isClosed() {
		return ErrClosed
	}
	if ttl <= 0 {
		return fmt.Errorf("cache %s: set: ttl %v is not positive", c.cfg.Name, ttl)
	}
	o := collect(opts)
	c.epoch.Add(1)
	if _, err := c.store(ctx, key, v, ttl+o.stale, "", o.tags); err != nil {
		return fmt.Errorf("cache %s: set: %w", c.cfg.Name, err)
	}
	return nil
}

func collect(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	return o
}

// freshness is what a read found.
type freshness int

const (
	fresh freshness = iota
	stale
)

// read fetches key's entry: with a stale window, together with its
// remaining time to live, to tell fresh from stale. It returns ErrNotFound
// for a missing or undecodable entry (the latter is deleted), and counts
// and logs Redis and codec failures.
func (c *Cache[V]) read(ctx context.Context, key string, window time.Duration) (V, freshness, error) {
	var zero V
	k := c.RedisKey(key)
	var raw []byte
	state := fresh
	if window <= 0 {
		b, err := c.rdb.Get(ctx, k).Bytes()
		if errors.Is(err, redis.Nil) {
			return zero, fresh, ErrNotFound
		}
		if err != nil {
			c.redisFailed(ctx, "read", key, err)
			return zero, fresh, fmt.Errorf("read %s: %w", c.logKey(key), err)
		}
		raw = b
	} else {
		var get *redis.StringCmd
		var ttl *redis.DurationCmd
		_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			get = p.Get(ctx, k)
			ttl = p.PTTL(ctx, k)
			return nil
		})
		if errors.Is(get.Err(), redis.Nil) {
			return zero, fresh, ErrNotFound
		}
		if err != nil {
			c.redisFailed(ctx, "read", key, err)
			return zero, fresh, fmt.Errorf("read %s: %w", c.logKey(key), err)
		}
		raw, _ = get.Bytes()
		// -1: no expiry (never stale); -2: expired just after the GET.
		if d := ttl.Val(); d == -2 || d >= 0 && d <= window {
			state = stale
		}
	}
	var v V
	if err := c.cfg.Codec.Unmarshal(raw, &v); err != nil {
		c.m.codecErrors.Inc()
		c.log.Warn("cache: dropping an entry that does not decode", "key", c.logKey(key), "err", err)
		if _, err := deleteScript.Run(ctx, c.rdb, []string{k, c.lockKey(key)}).Result(); err != nil {
			c.redisFailed(ctx, "delete undecodable entry", key, err)
		}
		return zero, fresh, ErrNotFound
	}
	return v, state, nil
}

// redisFailed counts a Redis failure and logs it, at most once a second
// per cache so that an outage does not flood the log. Failures caused by
// the caller's cancellation are neither.
func (c *Cache[V]) redisFailed(ctx context.Context, what, key string, err error) {
	if ctx.Err() != nil {
		return
	}
	c.m.redisErrors.Inc()
	now := time.Now().UnixNano()
	last := c.lastRedisLog.Load()
	if now-last < int64(time.Second) || !c.lastRedisLog.CompareAndSwap(last, now) {
		return
	}
	c.log.Warn("cache: redis failed", "op", what, "key", c.logKey(key), "err", err)
}

// logKey is how key appears in logs: itself with Config.LogKeys, else a
// fingerprint.
func (c *Cache[V]) logKey(key string) string {
	if c.cfg.LogKeys {
		return key
	}
	sum := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

func ms(d time.Duration) int64 { return max(d.Milliseconds(), 1) }
