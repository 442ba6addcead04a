package events

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Idempotency keys are scoped: the key a caller sends is stored under the
// scope of whoever sent it, so two API keys (or two Go publishers) using
// the same key never collide, and no caller can reach the keys Herald makes
// up itself. A scoped key is "{scope}:{key}"; every scope starts with a
// letter saying whose it is:
//
//	k{hash}   a gateway API key (HTTP publishes), by a hash of the API key
//	g{name}   a Go publisher (herald.RedisConfig.Publisher)
//	c         classic effect:complete conversions, keyed by payload hash
//	a         the random key of one script call (see publish.go)
//
// Keys of the scopes k, g and c live for the history TTL, whatever their
// text; a-keys only need to outlive go-redis's own retries of one script
// call and live AutoKeyTTL.

// AutoKeyTTL is how long the key Herald makes up for each script call is
// kept: longer than go-redis's retries of that call.
const AutoKeyTTL = 30 * time.Second

// MaxIdemKeyLen bounds a caller's idempotency key.
const MaxIdemKeyLen = 200

// ErrBadIdemKey is the reason a caller's idempotency key is refused.
var ErrBadIdemKey = fmt.Errorf("must be 1 to %d characters of printable ASCII without spaces", MaxIdemKeyLen)

// CheckIdemKey reports whether key may be used as a caller's idempotency
// key: 1 to MaxIdemKeyLen characters of printable ASCII, no spaces. The
// empty key means "none" and is accepted.
func CheckIdemKey(key string) error {
	if len(key) > MaxIdemKeyLen {
		return ErrBadIdemKey
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c > '~' {
			return ErrBadIdemKey
		}
	}
	return nil
}

// APIKeyScope is the scope of publishes made with a gateway API key. Only
// a hash of the key is part of it.
func APIKeyScope(apiKey string) string {
	sum := sha256.Sum256([]byte(apiKey))
	return "k" + hex.EncodeToString(sum[:8])
}

// PublisherScope is the scope of a Go publisher named name (any text that
// CheckIdemKey accepts; "" is "default").
func PublisherScope(name string) string {
	if name == "" {
		name = "default"
	}
	return "g" + name
}

// ScopedKey returns key in scope, or "" when key is "" (no key).
func ScopedKey(scope, key string) string {
	if key == "" {
		return ""
	}
	return scope + ":" + key
}

// ClassicKey is the scoped idempotency key of a classic effect:complete
// payload: every replica that hears the same message derives the same key,
// so exactly one conversion publishes.
func ClassicKey(payload []byte) string {
	sum := sha256.Sum256(payload)
	return "c:" + hex.EncodeToString(sum[:])
}

// autoKey returns a fresh random scoped key for one script call, so that
// go-redis's retry of that call after a broken connection cannot publish
// twice.
func autoKey() string { return "a:" + rand.Text() }

// idemTTL is how long a scoped key is kept, given the history TTL.
func idemTTL(scopedKey string, historyTTL time.Duration) time.Duration {
	if strings.HasPrefix(scopedKey, "a:") {
		return AutoKeyTTL
	}
	return historyTTL
}

// ErrIdempotencyConflict is returned when an idempotency key already served
// a publish to other channels or of other events: retrying is safe, reusing
// a key for something else is a mistake, and answering it with the first
// call's ids would silently lose the new events.
var ErrIdempotencyConflict = errors.New("idempotency key already used for other channels or events")

// Fingerprint identifies what a publish call is about, for idempotency: its
// channels and event names, in order. The data is left out on purpose: a
// retry may carry data that differs in detail (a re-run job's completion
// time), and it is the first call's data that was published.
func Fingerprint(pubs []Publication) string {
	h := sha256.New()
	var n [8]byte
	for _, p := range pubs {
		for _, part := range []string{p.Channel, p.Event} {
			binary.BigEndian.PutUint64(n[:], uint64(len(part)))
			h.Write(n[:])
			h.Write([]byte(part))
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
