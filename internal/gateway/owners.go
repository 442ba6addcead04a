package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Owners tells who owns an effect (PROTOCOL §2: effect:{id}:owner). An
// empty owner and nil error mean the effect has no recorded owner.
type Owners interface {
	Owner(ctx context.Context, effectID string) (string, error)
	SetOwner(ctx context.Context, effectID, userID string) error
}

// RedisOwners reads the classic effect:{id}:owner keys.
type RedisOwners struct{ rdb redis.UniversalClient }

// NewRedisOwners returns Owners backed by rdb.
func NewRedisOwners(rdb redis.UniversalClient) *RedisOwners { return &RedisOwners{rdb: rdb} }

func ownerKey(effectID string) string { return "effect:" + effectID + ":owner" }

// Owner returns the user named by effect:{id}:owner, or "" when unset.
func (o *RedisOwners) Owner(ctx context.Context, effectID string) (string, error) {
	v, err := o.rdb.Get(ctx, ownerKey(effectID)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("get effect owner: %w", err)
	}
	return v, nil
}

// SetOwner records the owner for a day, as an app starting a job would.
func (o *RedisOwners) SetOwner(ctx context.Context, effectID, userID string) error {
	return o.rdb.Set(ctx, ownerKey(effectID), userID, ownerTTL).Err()
}

// MemoryOwners is the single-node twin of RedisOwners.
type MemoryOwners struct {
	mu sync.Mutex
	m  map[string]string // effect id → user; guarded by mu
}

// NewMemoryOwners returns empty in-memory Owners.
func NewMemoryOwners() *MemoryOwners { return &MemoryOwners{m: make(map[string]string)} }

// Owner returns the recorded owner or "".
func (o *MemoryOwners) Owner(_ context.Context, effectID string) (string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.m[effectID], nil
}

// SetOwner records the owner (kept until the process ends; dev use only).
func (o *MemoryOwners) SetOwner(_ context.Context, effectID, userID string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.m[effectID] = userID
	return nil
}

var (
	_ Owners = (*RedisOwners)(nil)
	_ Owners = (*MemoryOwners)(nil)
)
