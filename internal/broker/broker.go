// Package broker moves event frames between gateway replicas. A Broker
// publishes events (appending them to their channel's history) and delivers
// the frames of the channels this replica subscribes to. Redis is the shared
// implementation; Memory is the single-node twin. Both pass one conformance
// suite (package brokertest).
package broker

import (
	"context"
	"errors"

	"github.com/heraldgw/herald/internal/events"
)

// ErrClosed is returned by Publish, Subscribe and Ping once Close was called.
var ErrClosed = errors.New("broker: closed")

// Handler receives each event frame of a subscribed channel with its event
// id, in id order per channel and at most once per id, also across Redis
// reconnects (the Redis broker refills what pub/sub missed from history).
// Calls never overlap: Redis calls it from its single delivery loop, Memory
// from Publish while holding its lock. So it must neither block nor call
// back into the broker. frame must not be modified and may be retained.
type Handler func(channel, id string, frame []byte)

// Broker is the contract between a replica and the shared event bus.
type Broker interface {
	// Publish validates pubs, appends them to their channels' histories and
	// publishes them atomically, returning their event ids in order. A
	// non-empty idemKey makes a repeat return the first ids and publish
	// nothing. A *events.FieldError reports invalid input.
	Publish(ctx context.Context, idemKey string, pubs ...events.Publication) ([]string, error)

	// Subscribe adds one local reference to each channel (a channel named
	// twice gets two); the broker receives a channel while it has at least
	// one reference. It returns once frames published afterwards will be
	// delivered to the Handler, or with an error, in which case it added no
	// reference. Invalid channel names are a *events.FieldError.
	Subscribe(ctx context.Context, channels ...string) error

	// Unsubscribe drops one reference to each channel; after the last one
	// the broker stops receiving the channel and delivers none of its frames
	// published after Unsubscribe returned. Dropping a reference that was
	// never added is ignored. It never blocks on the network.
	Unsubscribe(channels ...string)

	// History returns the retained events of channel published after the
	// event id since, oldest first. complete is false when some events
	// after since already left the history window (size or age), so the
	// caller missed events it cannot get back.
	History(ctx context.Context, channel, since string) (evs []Event, complete bool, err error)

	// Last returns the newest event id this replica knows for a channel it
	// receives: the last one delivered, or the newest in history when the
	// subscription began. "" when it does not receive the channel. A client
	// that starts from it and resumes with it as since misses nothing.
	Last(channel string) string

	// Ping reports whether the shared backend is reachable.
	Ping(ctx context.Context) error

	// Close stops delivery, makes blocked and later calls fail with
	// ErrClosed and waits for the broker's goroutines. It leaves the
	// dependencies it was given (such as a Redis client) open. Calling it
	// again does nothing and returns nil.
	Close() error
}
