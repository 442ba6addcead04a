// Package broker moves event frames between gateway replicas. A Broker
// publishes events (appending them to their channel's history) and delivers
// the frames of the channels this replica subscribes to. Redis is the shared
// implementation; Memory is the single-node twin. Both pass one conformance
// suite (package brokertest).
package broker

import (
	"context"

	"github.com/heraldgw/herald/internal/events"
)

// Handler receives each event frame of a subscribed channel, in publish
// order per channel. It is called from the broker's single delivery loop and
// must neither block nor call back into the broker; frame must not be
// modified and may be retained.
type Handler func(channel string, frame []byte)

// Broker is the contract between a replica and the shared event bus.
type Broker interface {
	// Publish validates pubs, appends them to their channels' histories and
	// publishes them atomically, returning their event ids in order. A
	// non-empty idemKey makes a repeat return the first ids and publish
	// nothing. A *events.FieldError reports invalid input.
	Publish(ctx context.Context, idemKey string, pubs ...events.Publication) ([]string, error)

	// Subscribe adds one local reference to each channel; the broker
	// receives a channel while it has at least one reference. It returns once
	// frames published afterwards will be delivered to the Handler, or with
	// an error, in which case it added no reference.
	Subscribe(ctx context.Context, channels ...string) error

	// Unsubscribe drops one reference to each channel; after the last one
	// the broker stops receiving the channel. It never blocks on the network.
	Unsubscribe(channels ...string)

	// Ping reports whether the shared backend is reachable.
	Ping(ctx context.Context) error

	// Close stops delivery and waits for the broker's goroutines.
	Close() error
}
