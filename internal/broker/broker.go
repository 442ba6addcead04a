// Package broker moves event frames between gateway replicas. A Broker
// publishes events (appending them to their channel's history) and delivers
// the frames of the channels this replica subscribes to. Redis is the shared
// implementation; Memory is the single-node twin. Both pass one conformance
// suite (package brokertest).
package broker

import (
	"context"
	"errors"
	"time"

	"github.com/heraldgw/herald/internal/events"
)

// ErrClosed is returned by Publish, Subscribe and Ping once Close was called.
var ErrClosed = errors.New("broker: closed")

// Handler receives each event frame of a subscribed channel with its event
// id, in id order per channel and at most once per id, also across Redis
// reconnects (the Redis broker refills what pub/sub missed from history).
// owner is the user an effect channel's event belongs to ("" when none):
// only that user's sockets may receive it. Calls never overlap and must
// not block; a Handler may call Unsubscribe, Last and History, but not
// Subscribe (which may wait for deliveries). frame must not be modified and
// may be retained.
type Handler func(channel, id, owner string, frame []byte)

// GapHandler is told that events of a subscribed channel were lost on
// their way to this replica and cannot be recovered from history (they
// left the window before a refill could read them). It is called from the
// delivery loop, before the events retained after the gap; it must not
// block.
type GapHandler func(channel string)

// Broker is the contract between a replica and the shared event bus.
type Broker interface {
	// Publish validates pubs, appends them to their channels' histories and
	// publishes them atomically, returning their event ids in order. A
	// non-empty idemKey, scoped with events.ScopedKey, makes a repeat
	// return the first ids and publish nothing. A *events.FieldError
	// reports invalid input.
	Publish(ctx context.Context, idemKey string, pubs ...events.Publication) ([]string, error)

	// Subscribe adds one local reference to each channel (a channel named
	// twice gets two); the broker receives a channel while it has at least
	// one reference. It returns once frames published afterwards will be
	// delivered to the Handler and Last knows the channel, or with an
	// error, in which case it added no reference. Invalid channel names are
	// a *events.FieldError.
	Subscribe(ctx context.Context, channels ...string) error

	// Unsubscribe drops one reference to each channel; after the last one
	// the broker stops receiving the channel and delivers none of its frames
	// published after Unsubscribe returned. Dropping a reference that was
	// never added is ignored. It never blocks on the network.
	Unsubscribe(channels ...string)

	// Last returns, for a channel this replica receives, an id such that
	// every event after it is delivered to the Handler after Last returned
	// or is being delivered now: the newest id delivered, or the channel's
	// baseline when the subscription began (its newest event, or a
	// "{ms}-0" before any event to come). "" when it does not receive the
	// channel.
	Last(channel string) string

	// History returns the retained events of channel published after the
	// event id since ("" is "0-0"), oldest first, whether they are all
	// that was published after since (false: some left the window, the
	// caller missed events it cannot get back), and the channel's recorded
	// owner.
	History(ctx context.Context, channel, since string) (events.Replay, error)

	// Owner returns who owns an effect: the app's effect:{id}:owner, else
	// the owner an event of it named; "" when none.
	Owner(ctx context.Context, effectID string) (string, error)

	// SetOwner records userID as the owner of an effect for ttl, as an app
	// does when it starts a job (the classic effect:{id}:owner key).
	SetOwner(ctx context.Context, effectID, userID string, ttl time.Duration) error

	// Ping reports whether the shared backend is reachable.
	Ping(ctx context.Context) error

	// Close stops delivery, makes blocked and later calls fail with
	// ErrClosed and waits for the broker's goroutines. It leaves the
	// dependencies it was given (such as a Redis client) open. Calling it
	// again does nothing and returns nil.
	Close() error
}

// Event is one published event as kept in a channel's history: its id and
// the frame delivered to Handlers (do not modify it).
type Event = events.Entry
