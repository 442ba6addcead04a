// Package herald publishes events to Herald, the real-time notification
// gateway, from another Go program: a worker that finished a job, an API
// server that wants to notify a user.
//
// Two publishers implement the same [Publisher] interface:
//
//   - [RedisPublisher] writes to the Redis that the gateway replicas share,
//     through the same atomic script the gateway itself uses. It needs no
//     gateway round trip and no API key, only the Redis client.
//   - [HTTPPublisher] calls a gateway's publish API (POST /api/publish) with
//     an API key, for programs that cannot reach Redis.
//
// Either way an event is appended to its channel's history (so clients that
// reconnect get it) and pushed to every connected subscriber, and it gets an
// event id of the form "{ms}-{seq}" that increases per channel.
//
// A batch ([Publisher.PublishBatch]) is atomic: all its events are published
// or none is. An idempotency key ([IdempotencyKey]) makes a call safe to
// repeat: a repeat within the history window returns the first call's ids
// and publishes nothing.
//
// Retries: [RedisPublisher] retries transient Redis errors itself, with the
// same idempotency key, and then returns the error. [HTTPPublisher] makes one
// attempt; a call with an idempotency key can always be retried safely.
package herald

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/heraldgw/herald/internal/events"
)

// Publisher publishes events to Herald channels. Implementations are safe
// for concurrent use.
type Publisher interface {
	// Publish publishes one event on channel and returns its event id.
	// data is encoded as described at [Message.Data].
	Publish(ctx context.Context, channel, event string, data any, opts ...PublishOption) (id string, err error)

	// PublishBatch publishes msgs atomically, all or none, and returns
	// their event ids in the order of msgs. An empty batch returns
	// [ErrNoMessages].
	PublishBatch(ctx context.Context, msgs []Message, opts ...PublishOption) (ids []string, err error)
}

// Compile-time checks that both publishers satisfy Publisher.
var (
	_ Publisher = (*RedisPublisher)(nil)
	_ Publisher = (*HTTPPublisher)(nil)
)

// Message is one event of a batch.
type Message struct {
	// Channel is the channel to publish on: "user:{userId}",
	// "effect:{userEffectId}" or "public:{name}". Names match
	// ^[A-Za-z0-9:_.\-]{1,128}$.
	Channel string

	// Event is the event name, for example "effect.complete". Same
	// character rule as Channel.
	Event string

	// Data is the event's payload. It is encoded with encoding/json,
	// without HTML escaping, except that a json.RawMessage or []byte is
	// taken as already encoded JSON and sent as is (it must be valid JSON).
	// nil, and an empty json.RawMessage or []byte, are sent as null.
	Data any
}

// PublishOptions are the per-call settings that [PublishOption]s set. The
// zero value publishes without an idempotency key. It is exported so that
// other implementations of [Publisher] (test fakes, wrappers) can read the
// options they are given, with [ApplyPublishOptions].
type PublishOptions struct {
	// IdempotencyKey, when not empty, makes the call idempotent: see
	// [IdempotencyKey].
	IdempotencyKey string
}

// PublishOption sets a per-call option of Publish and PublishBatch.
type PublishOption func(*PublishOptions)

// ApplyPublishOptions returns the options that opts set, starting from the
// zero PublishOptions.
func ApplyPublishOptions(opts ...PublishOption) PublishOptions {
	var o PublishOptions
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	return o
}

// IdempotencyKey makes one Publish or PublishBatch call idempotent: if a call
// with the same key succeeded within the history window (default 10
// minutes), a repeat publishes nothing and returns the first call's ids.
// That makes a retry after a timeout or a crash safe, as long as the key
// names the thing being published and not the attempt: a job id, a request
// id. Keys live in the Redis the gateways share, one space for all
// publishers, so namespace them ("job:{id}"). A repeat must go to the same
// channels with the same event names; its data may differ (a re-run job's
// new timestamp) and is not published. A repeat to other channels or of
// other events fails with [ErrIdempotencyConflict].
//
// A key is 1 to 200 characters of printable ASCII without spaces; other
// keys fail the call before anything is sent. An empty key means none.
//
// The key is an option of the call, not of the context: a context passes
// through many calls, and a key that silently applied to all of them would
// turn every publish after the first into a no-op.
func IdempotencyKey(key string) PublishOption {
	return func(o *PublishOptions) { o.IdempotencyKey = key }
}

// ErrIdempotencyConflict is returned (or matched by errors.Is, for an
// [APIError] from the HTTP API) when an idempotency key was already used
// for a publish to other channels or of other events.
var ErrIdempotencyConflict = events.ErrIdempotencyConflict

// ErrNotReplicated is matched by errors.Is for a publish through a
// [RedisPublisher] with [RedisConfig.ReplicaAcks] that not enough replicas
// confirmed in time. Its events were not published to subscribers yet;
// they may be later, if the primary keeps them: retry with the same
// [IdempotencyKey] to get their ids or publish them.
var ErrNotReplicated = events.ErrNotReplicated

// ErrNoMessages is returned by PublishBatch when given no messages.
var ErrNoMessages = errors.New("herald: no messages to publish")

// FieldError reports a message that Herald refuses, before anything was
// sent. Its text is safe to show to users.
type FieldError struct {
	// Field names the bad field as the HTTP API would: "channel", "event",
	// "data" for Publish; "items[2].channel" for the third message of a
	// batch; "idempotencyKey" for a bad key; "userEffectId" or "userId"
	// for an [EffectComplete] whose ids cannot name a channel.
	Field string
	// Reason says what is wrong with it.
	Reason string
}

func (e *FieldError) Error() string { return "herald: invalid " + e.Field + ": " + e.Reason }

// UserChannel returns the personal channel of a user, "user:{userID}",
// which every connection of that user receives.
func UserChannel(userID string) string { return events.UserChannel(userID) }

// EffectChannel returns the channel of one effect (job),
// "effect:{userEffectID}".
func EffectChannel(userEffectID string) string { return events.EffectChannel(userEffectID) }

// encode turns msgs into validated publications, encoding their data, and
// checks the call's options. It is the one place both publishers validate
// input, so they refuse exactly the same things.
func encode(msgs []Message, single bool, o PublishOptions) ([]events.Publication, error) {
	if len(msgs) == 0 {
		return nil, ErrNoMessages
	}
	if err := checkIdemKey(o.IdempotencyKey); err != nil {
		return nil, err
	}
	pubs := make([]events.Publication, len(msgs))
	for i, m := range msgs {
		field := func(name string) string {
			if single {
				return name
			}
			return fmt.Sprintf("items[%d].%s", i, name)
		}
		data, err := encodeData(m.Data)
		if err != nil {
			return nil, &FieldError{Field: field("data"), Reason: err.Error()}
		}
		p := events.Publication{Channel: m.Channel, Event: m.Event, Data: data}
		if err := p.Validate(); err != nil {
			var fe *events.FieldError
			if errors.As(err, &fe) {
				return nil, &FieldError{Field: field(fe.Field), Reason: fe.Reason}
			}
			return nil, fmt.Errorf("herald: invalid message: %w", err)
		}
		pubs[i] = p
	}
	return pubs, nil
}

func checkIdemKey(key string) error {
	if err := events.CheckIdemKey(key); err != nil {
		return &FieldError{Field: "idempotencyKey", Reason: err.Error()}
	}
	return nil
}

// encodeData encodes an event's data as described at Message.Data.
func encodeData(v any) (json.RawMessage, error) {
	switch d := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		if len(d) == 0 {
			return nil, nil
		}
		if !json.Valid(d) {
			return nil, errors.New("not valid JSON")
		}
		return d, nil
	case []byte:
		if len(d) == 0 {
			return nil, nil
		}
		if !json.Valid(d) {
			return nil, errors.New("not valid JSON")
		}
		return d, nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
