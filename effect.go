package herald

import (
	"context"
	"fmt"
	"time"

	"github.com/heraldgw/herald/internal/events"
)

// EffectCompleteEvent is the event name of a job-completion event.
const EffectCompleteEvent = "effect.complete"

// EffectComplete says that a user's effect (a job) has finished and where
// its result is.
type EffectComplete struct {
	// UserID is the user who asked for the effect. When set, the event also
	// goes to the user's personal channel, user:{UserID}.
	UserID string
	// UserEffectID identifies the effect; required. Unless the app writes
	// an effect:{id}:owner key, it is a capability: make it an unguessable
	// UUID.
	UserEffectID string
	// ResultURL is where the result can be fetched.
	ResultURL string
	// Kind names the effect ("blur", "render"), sent as "kind" when set:
	// the demo page titles its cards with it. Optional; apps that publish
	// the classic JSON themselves may add it too.
	Kind string
	// Timestamp is when the effect finished, sent in milliseconds. Zero
	// means now.
	Timestamp time.Time
}

// PublishEffectComplete publishes e as an "effect.complete" event on
// effect:{UserEffectID} and, when UserID is set, on user:{UserID}, in one
// atomic batch, and returns the event ids in that order. The data of both
// events is the classic effect-complete JSON that existing apps publish on
// the Redis channel effect:complete:
//
//	{"userEffectId":"…","resultUrl":"…","timestamp":1732600000000,"userId":"…","kind":"…"}
//
// with "userId" left out when UserID is empty and "kind" when Kind is. So clients cannot tell an
// event published here from one published the classic way.
func PublishEffectComplete(ctx context.Context, p Publisher, e EffectComplete, opts ...PublishOption) ([]string, error) {
	msgs, err := effectMessages(e, time.Now)
	if err != nil {
		return nil, err
	}
	ids, err := p.PublishBatch(ctx, msgs, opts...)
	if err != nil {
		return nil, fmt.Errorf("publish effect %s complete: %w", e.UserEffectID, err)
	}
	return ids, nil
}

const idRule = "only letters, digits and :_.- and a channel name of at most 128 characters"

// effectMessages builds the messages of e; now supplies a zero Timestamp.
func effectMessages(e EffectComplete, now func() time.Time) ([]Message, error) {
	if e.UserEffectID == "" {
		return nil, &FieldError{Field: "userEffectId", Reason: "missing"}
	}
	if _, _, err := events.ParseChannel(EffectChannel(e.UserEffectID)); err != nil {
		return nil, &FieldError{Field: "userEffectId", Reason: "not usable in a channel name: " + idRule}
	}
	if e.UserID != "" {
		if _, _, err := events.ParseChannel(UserChannel(e.UserID)); err != nil {
			return nil, &FieldError{Field: "userId", Reason: "not usable in a channel name: " + idRule}
		}
	}
	ts := e.Timestamp
	if ts.IsZero() {
		ts = now()
	}
	data, err := encodeData(events.Classic{
		UserEffectID: e.UserEffectID,
		ResultURL:    e.ResultURL,
		Timestamp:    ts.UnixMilli(),
		UserID:       e.UserID,
		Kind:         e.Kind,
	})
	if err != nil {
		return nil, fmt.Errorf("herald: effect complete: %w", err)
	}
	msgs := []Message{{Channel: EffectChannel(e.UserEffectID), Event: EffectCompleteEvent, Data: data}}
	if e.UserID != "" {
		msgs = append(msgs, Message{Channel: UserChannel(e.UserID), Event: EffectCompleteEvent, Data: data})
	}
	return msgs, nil
}
