// Package session reads the sessions apps keep in Redis (session:{id} JSON,
// PROTOCOL §1), creates and revokes them, and issues one-time connect
// tickets. Redis is the shared implementation; Memory is the single-node
// twin. Both pass one conformance suite (package sessiontest).
package session

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Errors of session lookups. Both mean 401 to a connecting client.
var (
	ErrNotFound = errors.New("session not found")
	ErrExpired  = errors.New("session expired")
)

// ErrUnusable is wrapped by the errors of sessions that exist but whose
// JSON cannot be used: malformed, without userId or expiresAt, or with a
// userId that cannot form a channel name. It wraps ErrNotFound (401 to a
// client), and its errors say why without quoting the JSON: the app that
// wrote the session has a bug for its operators to see.
var ErrUnusable = fmt.Errorf("%w: unusable session JSON", ErrNotFound)

// Session is the classic session JSON. ExpiresAt is in milliseconds since
// the epoch. ID is the secret session id: never log it.
type Session struct {
	ID        string `json:"-"`
	UserID    string `json:"userId"`
	Email     string `json:"email"`
	Plan      string `json:"plan"`
	ExpiresAt int64  `json:"expiresAt"`
}

// Expired reports whether the session is past its expiresAt at now.
func (s Session) Expired(now time.Time) bool { return s.ExpiresAt <= now.UnixMilli() }

// Revocation announces that a session was revoked. It carries the user and
// a hash of the session id (see Hash), never the id itself.
type Revocation struct {
	UserID      string `json:"user"`
	SessionHash string `json:"sid"`
}

// Store is the contract of the session backends. Its methods are safe for
// concurrent use. Errors other than ErrNotFound, ErrExpired and Create's
// *events.FieldError mean the backend failed (503 to a connecting client).
// No error text contains a session id or a ticket.
type Store interface {
	// Get returns the session with id, its ID set. It returns ErrNotFound
	// when there is none (or its JSON is unusable: the error then wraps
	// ErrUnusable, and so ErrNotFound, and says why) and ErrExpired when its expiresAt is at or
	// before the store's clock, even if the key still exists.
	Get(ctx context.Context, id string) (Session, error)

	// Create stores a new session with a random unguessable id for ttl
	// (SETEX session:{id}, expiresAt = now+ttl in ms) and returns it. An
	// empty or channel-unsafe userID (user:{userId} must be a valid channel
	// name) or a ttl under 1ms gives an *events.FieldError.
	Create(ctx context.Context, userID, email, plan string, ttl time.Duration) (Session, error)

	// Revoke deletes the session and announces a Revocation to every
	// Watch, on every replica: the delete and the announcement happen
	// together or not at all. Revoking an unknown id returns ErrNotFound; a
	// session whose JSON is unusable is still deleted and announced, with
	// an empty UserID.
	Revoke(ctx context.Context, id string) error

	// Alive reports, for each id, whether its session still exists, is
	// usable and has not expired, in one round trip. Used by the periodic
	// check. It fails as a whole (and reports nothing) only when the
	// backend fails.
	Alive(ctx context.Context, ids []string) ([]bool, error)

	// IssueTicket returns a random single-use ticket for the session (s.ID
	// must be set), valid for TicketTTL.
	IssueTicket(ctx context.Context, s Session) (string, error)

	// RedeemTicket consumes a ticket (atomically: GETDEL) and returns its
	// session, which must still be valid: a ticket of a revoked or expired
	// session is consumed and gives the session's ErrNotFound or
	// ErrExpired. A used, unknown or stale ticket gives ErrNotFound. Of
	// concurrent redeems of one ticket at most one succeeds.
	RedeemTicket(ctx context.Context, ticket string) (Session, error)

	// Watch calls fn for every revocation announced, on any replica, after
	// its subscription is in place (which happens shortly after Watch is
	// called; revocations before that are not delivered), until ctx is
	// done; then it returns nil. It returns an error only when it cannot
	// go on (its Redis client was closed). It re-establishes its
	// subscription after Redis reconnects; revocations announced while
	// disconnected are lost, so the periodic Alive check is the backstop.
	// fn is called from one goroutine at a time, in announcement order; it
	// must not block.
	Watch(ctx context.Context, ready func(), fn func(Revocation)) error
}

// TicketTTL is the life of a connect ticket (PROTOCOL §7).
const TicketTTL = 30 * time.Second

// Hash returns a short one-way digest of a session id, safe to keep in
// memory indexes, pub/sub messages and logs where the id itself must not go.
func Hash(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:12])
}
