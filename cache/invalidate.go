package cache

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Delete removes the entries of keys, in one atomic step, and revokes the
// loads of those keys in flight in any process: what they loaded is
// returned to their callers but not stored. It returns how many entries
// existed.
func (c *Cache[V]) Delete(ctx context.Context, keys ...string) (int, error) {
	if c.isClosed() {
		return 0, ErrClosed
	}
	c.epoch.Add(1)
	if len(keys) == 0 {
		return 0, nil
	}
	rkeys := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		rkeys = append(rkeys, c.RedisKey(k), c.lockKey(k))
	}
	n, err := deleteScript.Run(ctx, c.rdb, rkeys).Int()
	if err != nil {
		c.redisFailed(ctx, "delete", keys[0], err)
		return 0, fmt.Errorf("cache %s: delete %d key(s): %w", c.cfg.Name, len(keys), err)
	}
	return n, nil
}

// InvalidateTags removes every entry recorded under any of tags, and the
// tag sets, in one atomic script, and revokes the loads in flight that will
// store under those tags. A write racing with it either ran before it, and
// its entry is removed, or runs after it: a load that claimed its lock
// before the invalidation is then refused, and only a load that started
// after it (and so read the source after it) stores a tagged entry. It
// returns how many entries were removed.
//
// The script holds Redis for the time it takes to unlink every member
// (about 1 µs per key): tags of millions of keys are better split.
func (c *Cache[V]) InvalidateTags(ctx context.Context, tags ...string) (int, error) {
	if c.isClosed() {
		return 0, ErrClosed
	}
	c.epoch.Add(1)
	if len(tags) == 0 {
		return 0, nil
	}
	n, err := invalidateTagsScript.Run(ctx, c.rdb, c.tagKeys(tags), c.entry).Int()
	if err != nil {
		c.redisFailed(ctx, "invalidate tags", "", err)
		return 0, fmt.Errorf("cache %s: invalidate %d tag(s): %w", c.cfg.Name, len(tags), err)
	}
	return n, nil
}

// InvalidatePattern removes the entries whose keys match pattern (Redis
// glob syntax: *, ?, [abc], \ escapes; matched against the cache's keys,
// not the Redis keys) and revokes the loads of matching keys in flight that
// it comes across. It walks the keyspace with SCAN, Config.ScanCount at a
// time, and removes each batch with UNLINK, so Redis stays responsive
// however many keys match; it never uses KEYS.
//
// It is a sweep, not an atomic step: an entry written while it runs may
// survive it. Use tags when writers race with the invalidation. On a Redis
// Cluster it scans the master that serves the cache's slot (a cache lives
// in one slot); while that slot is being moved to another master, keys
// already moved are not seen. It returns how many entries it removed, and
// stops at the first error or when ctx is done.
func (c *Cache[V]) InvalidatePattern(ctx context.Context, pattern string) (int, error) {
	if c.isClosed() {
		return 0, ErrClosed
	}
	c.epoch.Add(1)
	// One SCAN finds entries ({ns}:v:…) and locks ({ns}:l:…) alike.
	match := globEscape(c.cfg.Namespace) + ":[vl]:" + pattern
	var scanner redis.Cmdable = c.rdb
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		// SCAN has no key: a cluster client would send it to any node.
		node, err := cc.MasterForKey(ctx, c.entry)
		if err != nil {
			c.redisFailed(ctx, "scan", pattern, err)
			return 0, fmt.Errorf("cache %s: invalidate pattern: find the cache's node: %w", c.cfg.Name, err)
		}
		scanner = node
	}
	removed := 0
	var cursor uint64
	for {
		keys, next, err := scanner.Scan(ctx, cursor, match, int64(c.cfg.ScanCount)).Result()
		if err != nil {
			c.redisFailed(ctx, "scan", pattern, err)
			return removed, fmt.Errorf("cache %s: invalidate pattern: scan: %w", c.cfg.Name, err)
		}
		if len(keys) > 0 {
			n, err := c.unlink(ctx, keys)
			removed += n
			if err != nil {
				c.redisFailed(ctx, "unlink", pattern, err)
				return removed, fmt.Errorf("cache %s: invalidate pattern: %w", c.cfg.Name, err)
			}
		}
		if next == 0 {
			return removed, nil
		}
		cursor = next
	}
}

// unlink removes a batch of entry and lock keys in one round trip and
// returns how many entries it removed.
func (c *Cache[V]) unlink(ctx context.Context, keys []string) (int, error) {
	var entries, locks []string
	for _, k := range keys {
		if strings.HasPrefix(k, c.entry) {
			entries = append(entries, k)
		} else {
			locks = append(locks, k)
		}
	}
	var n *redis.IntCmd
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if len(entries) > 0 {
			n = p.Unlink(ctx, entries...)
		}
		if len(locks) > 0 {
			p.Unlink(ctx, locks...)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("unlink %d key(s): %w", len(keys), err)
	}
	if n == nil {
		return 0, nil
	}
	return int(n.Val()), nil
}

// globEscape escapes the glob metacharacters of s for SCAN MATCH.
func globEscape(s string) string {
	if !strings.ContainsAny(s, `*?[]\`) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
