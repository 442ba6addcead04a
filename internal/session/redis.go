package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/batch"
	"github.com/heraldgw/herald/internal/events"
)

// Redis is the Store shared by all replicas. Sessions are the classic
// session:{id} keys that apps write too (never prefixed), tickets and the
// revocation channel are Herald's own names (events.Names). It is safe for
// concurrent use.
type Redis struct {
	client redis.UniversalClient
	names  events.Names
	log    *slog.Logger
	now    func() time.Time
	revoke *redis.Script
	renew  chan struct{} // capacity 1: Watch moves to a new pub/sub connection (Resubscribe)
	// gets are the GETs of Get: those that arrive while others are under
	// way go together in one pipeline, one round trip (and a write and a
	// read on each side) for many connects.
	gets batch.Combiner[string, getReply]
}

// getReply is one GET's answer: the value, or its error (redis.Nil when
// the key does not exist).
type getReply struct {
	data []byte
	err  error
}

// Bounds of the pipelines of Get: at most getBatch GETs each, getsInFlight
// under way at once (more keep a busy store's round trips overlapping), each
// given up after getCallTimeout.
const (
	getBatch       = 256
	getsInFlight   = 4
	getCallTimeout = 5 * time.Second
)

var _ Store = (*Redis)(nil)

// revokeSrc deletes a session and announces its revocation in one atomic
// step, but only if the key still holds the value the caller read (and took
// the user id from); it returns 0 when the value changed or vanished.
//
// KEYS[1] session key; ARGV[1] value read; ARGV[2] channel; ARGV[3] message.
const revokeSrc = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
	return 0
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
`

// NewRedis returns a Store on client. Expiry decisions (expiresAt in the
// session JSON) use now, time.Now when nil; key lifetimes are Redis's own.
// A nil log discards.
func NewRedis(client redis.UniversalClient, names events.Names, log *slog.Logger, now func() time.Time) *Redis {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	r := &Redis{client: client, names: names, log: log, now: now, revoke: redis.NewScript(revokeSrc), renew: make(chan struct{}, 1)}
	r.gets = batch.Combiner[string, getReply]{Run: r.getAll, MaxWeight: getBatch, Timeout: getCallTimeout, Concurrency: getsInFlight}
	return r
}

// getAll GETs keys in one pipeline (not MGET, which a Cluster refuses
// across slots), each with its own answer.
func (r *Redis) getAll(ctx context.Context, _ string, keys []string) ([]getReply, error) {
	cmds := make([]*redis.StringCmd, len(keys))
	// The pipeline's own error is the first failed command's, which may be
	// a harmless redis.Nil ahead of a network error: look at each command.
	_, _ = r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Get(ctx, k)
		}
		return nil
	})
	out := make([]getReply, len(keys))
	for i, cmd := range cmds {
		out[i].data, out[i].err = cmd.Bytes()
	}
	return out, nil
}

// Get implements Store. An unusable session is logged (by its Hash) at Warn,
// since it means an app writes sessions Herald cannot read.
func (r *Redis) Get(ctx context.Context, id string) (Session, error) {
	if id == "" {
		return Session{}, ErrNotFound
	}
	got, err := r.gets.Do(ctx, "", sessionKey(id))
	if err == nil {
		err = got.err
	}
	data := got.data
	switch {
	case errors.Is(err, redis.Nil):
		return Session{}, ErrNotFound
	case redis.HasErrorPrefix(err, "WRONGTYPE"):
		r.log.Warn("session key is not a string", "session", Hash(id))
		return Session{}, fmt.Errorf("%w: session key is not a string", ErrNotFound)
	case err != nil:
		return Session{}, fmt.Errorf("get session: %w", err)
	}
	s, err := parse(data)
	if err != nil {
		r.log.Warn("unusable session", "session", Hash(id), "err", err)
		return Session{}, err
	}
	if s.Expired(r.now()) {
		if s.ExpiresAt < secondsHint {
			r.log.Warn("session expiresAt is before 1973: is it written in seconds instead of milliseconds?",
				"session", Hash(id), "expiresAt", s.ExpiresAt)
		}
		return Session{}, ErrExpired
	}
	s.ID = id
	return s, nil
}

// secondsHint is 1973-03-03 in milliseconds, but 5138 AD in seconds: an
// expiresAt below it was almost surely written in seconds.
const secondsHint = 100_000_000_000

// Create implements Store with one SET session:{id} … PX ttl.
func (r *Redis) Create(ctx context.Context, userID, email, plan string, ttl time.Duration) (Session, error) {
	s, err := newSession(r.now(), userID, email, plan, ttl)
	if err != nil {
		return Session{}, fmt.Errorf("create session: %w", err)
	}
	// A plain SET, not SET NX: with 256 random bits a collision does not
	// happen, and a retried SET NX would report one that did not.
	if err := r.client.Set(ctx, sessionKey(s.ID), encode(s), ttl.Truncate(time.Millisecond)).Err(); err != nil {
		return Session{}, fmt.Errorf("create session: %w", err)
	}
	return s, nil
}

// revokeAttempts bounds how often Revoke re-reads a session that an app
// rewrites between Revoke's read and its delete.
const revokeAttempts = 3

// Revoke implements Store: it reads the session for its user id, then a
// script deletes it and publishes the Revocation on names.Revocations()
// atomically, provided the value did not change in between. If go-redis
// retries the script after a network error that hid its success, Revoke
// reports ErrNotFound for a session it did revoke.
func (r *Redis) Revoke(ctx context.Context, id string) error {
	if id == "" {
		return ErrNotFound
	}
	key := sessionKey(id)
	for range revokeAttempts {
		data, err := r.client.Get(ctx, key).Bytes()
		if errors.Is(err, redis.Nil) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("revoke session: %w", err)
		}
		rev := Revocation{SessionHash: Hash(id)}
		if s, err := parse(data); err == nil {
			rev.UserID = s.UserID
		}
		msg, err := json.Marshal(rev)
		if err != nil {
			return fmt.Errorf("revoke session: %w", err)
		}
		done, err := r.revoke.Run(ctx, r.client, []string{key}, data, r.names.Revocations(), msg).Int()
		if err != nil {
			return fmt.Errorf("revoke session: %w", err)
		}
		if done == 1 {
			return nil
		}
	}
	return fmt.Errorf("revoke session: the session changed %d times while being revoked", revokeAttempts)
}

// Alive implements Store with one pipeline of GETs (getAll).
func (r *Redis) Alive(ctx context.Context, ids []string) ([]bool, error) {
	alive := make([]bool, len(ids))
	var keys []string
	var at []int // ids' index of each key
	for i, id := range ids {
		if id != "" {
			keys, at = append(keys, sessionKey(id)), append(at, i)
		}
	}
	if len(keys) == 0 {
		return alive, nil
	}
	got, _ := r.getAll(ctx, "", keys)
	now := r.now()
	for j, g := range got {
		var reply redis.Error
		switch {
		case errors.As(g.err, &reply): // redis.Nil (no key) or WRONGTYPE: not alive
			continue
		case g.err != nil:
			return nil, fmt.Errorf("check sessions: %w", g.err)
		}
		_, err := decode(g.data, now)
		alive[at[j]] = err == nil
	}
	return alive, nil
}

// IssueTicket implements Store: SET {names.Ticket(ticket)} {session id} EX 30.
func (r *Redis) IssueTicket(ctx context.Context, s Session) (string, error) {
	if s.ID == "" {
		return "", errors.New("issue ticket: session has no id")
	}
	t := newToken()
	if err := r.client.Set(ctx, r.names.Ticket(t), s.ID, TicketTTL).Err(); err != nil {
		return "", fmt.Errorf("issue ticket: %w", err)
	}
	return t, nil
}

// RedeemTicket implements Store with GETDEL (Redis ≥ 6.2), then Get.
func (r *Redis) RedeemTicket(ctx context.Context, ticket string) (Session, error) {
	if len(ticket) != tokenLen {
		return Session{}, ErrNotFound
	}
	id, err := r.client.GetDel(ctx, r.names.Ticket(ticket)).Result()
	if errors.Is(err, redis.Nil) {
		return Session{}, ErrNotFound
	}
	if err != nil {
		return Session{}, fmt.Errorf("redeem ticket: %w", err)
	}
	s, err := r.Get(ctx, id)
	if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrExpired) {
		return Session{}, fmt.Errorf("redeem ticket: %w", err)
	}
	return s, err
}

// Resubscribe makes Watch close its pub/sub connection and subscribe on a
// new one, without blocking. After a Sentinel failover go-redis moves its
// command connections to the new primary but leaves pub/sub connections on
// the old one, where revocations published on the new primary may never
// arrive (the broker's primary watch calls this, see
// broker.RedisOptions.OnPrimaryChange). Revocations announced meanwhile
// are caught by the session check.
func (r *Redis) Resubscribe() {
	select {
	case r.renew <- struct{}{}:
	default:
	}
}

// Watch implements Store on its own pub/sub connection, subscribed to
// names.Revocations(). It logs its first subscription at Debug and every
// re-subscription (after a reconnect) at Info. Messages that are not a
// Revocation with a SessionHash are logged and skipped. It returns an error
// only if the client is closed under it. Resubscribe moves it to a new
// connection.
func (r *Redis) Watch(ctx context.Context, ready func(), fn func(Revocation)) error {
	ps := r.client.Subscribe(ctx, r.names.Revocations())
	defer func() { ps.Close() }()
	// go-redis reads the socket in its own goroutine, pings it and
	// re-subscribes after reconnects; its Go channel only must never stay
	// full for long, which it does not as fn does not block.
	msgs := ps.ChannelWithSubscriptions()
	subscribed := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.renew:
			r.log.Info("revocation watch moving to a new connection (Redis primary changed)")
			ps.Close()
			ps = r.client.Subscribe(ctx, r.names.Revocations())
			msgs = ps.ChannelWithSubscriptions()
		case m, ok := <-msgs:
			if !ok {
				return errors.New("watch revocations: subscription closed")
			}
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind != "subscribe" {
					continue
				}
				if subscribed {
					r.log.Info("revocation watch re-subscribed; revocations announced while disconnected are caught by the session check")
				} else {
					r.log.Debug("revocation watch subscribed")
					if ready != nil {
						ready()
					}
				}
				subscribed = true
			case *redis.Message:
				var rev Revocation
				if err := json.Unmarshal([]byte(m.Payload), &rev); err != nil || rev.SessionHash == "" {
					r.log.Warn("ignoring bad revocation message", "channel", m.Channel, "bytes", len(m.Payload))
					continue
				}
				if ctx.Err() != nil {
					return nil
				}
				fn(rev)
			}
		}
	}
}
