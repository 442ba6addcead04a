// Package events holds Herald's event envelope: channel names and their
// rules, the JSON frame sent to clients, the classic effect:complete
// payload, the names of Herald's own Redis keys and the atomic publish
// script that appends an event to its channel's history and publishes it.
package events

import (
	"errors"
	"strings"
)

// ClassicChannel is the Redis channel on which existing apps PUBLISH their
// effect-complete JSON (PROTOCOL §1). It is an ingress, not a client channel.
const ClassicChannel = "effect:complete"

// EffectComplete is the event name of a job-completion event.
const EffectComplete = "effect.complete"

// MaxNameLen is the longest channel or event name accepted.
const MaxNameLen = 128

// Kind is the class of a channel, which decides who may receive it.
type Kind int

// Channel kinds (PROTOCOL §2).
const (
	KindInvalid Kind = iota
	KindUser         // user:{userId}: that user only, subscribed automatically
	KindEffect       // effect:{userEffectId}: owner check, else a capability
	KindPublic       // public:{name}: any authenticated client
)

// Errors returned by ParseChannel.
var (
	ErrBadChannel     = errors.New("invalid channel name")
	ErrUnknownChannel = errors.New("unknown channel kind")
)

// ValidName reports whether s matches ^[A-Za-z0-9:_.\-]{1,128}$, the rule for
// channel and event names. Names that pass need no JSON escaping.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == ':', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

// ParseChannel validates a client-facing channel name and returns its kind
// and the id after the kind's prefix. The classic ingress channel
// effect:complete is not a client channel and yields ErrUnknownChannel.
func ParseChannel(name string) (Kind, string, error) {
	if !ValidName(name) {
		return KindInvalid, "", ErrBadChannel
	}
	prefix, id, ok := strings.Cut(name, ":")
	if !ok || id == "" {
		return KindInvalid, "", ErrUnknownChannel
	}
	switch prefix {
	case "user":
		return KindUser, id, nil
	case "effect":
		if name == ClassicChannel || strings.HasSuffix(id, ":owner") {
			return KindInvalid, "", ErrUnknownChannel
		}
		return KindEffect, id, nil
	case "public":
		return KindPublic, id, nil
	}
	return KindInvalid, "", ErrUnknownChannel
}

// Prefix returns the part of a channel name before its first colon: what
// logs may say of a channel, since an effect id is a capability.
func Prefix(channel string) string {
	p, _, _ := strings.Cut(channel, ":")
	return p
}

// UserChannel returns the personal channel of a user.
func UserChannel(userID string) string { return "user:" + userID }

// EffectChannel returns the channel of one effect (job).
func EffectChannel(userEffectID string) string { return "effect:" + userEffectID }
