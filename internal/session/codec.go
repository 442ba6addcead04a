package session

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/heraldgw/herald/internal/events"
)

// keyPrefix is the classic session key prefix (PROTOCOL §1). It is never
// given Herald's key prefix: apps write these keys themselves.
const keyPrefix = "session:"

// sessionKey returns the Redis key of the session with id.
func sessionKey(id string) string { return keyPrefix + id }

// tokenBytes is the entropy of session ids and tickets Herald makes.
const tokenBytes = 32

// tokenLen is the length of a token made by newToken.
var tokenLen = base64.RawURLEncoding.EncodedLen(tokenBytes)

// newToken returns tokenBytes of crypto/rand, base64url without padding:
// unguessable, and safe in URLs, cookies and Redis keys.
func newToken() string {
	var b [tokenBytes]byte
	rand.Read(b[:]) // never fails: since Go 1.24 a broken source crashes the program
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// newSession validates the arguments of Store.Create and returns the session
// to store, with a fresh id. Invalid arguments give an *events.FieldError.
func newSession(now time.Time, userID, email, plan string, ttl time.Duration) (Session, error) {
	if userID == "" || !events.ValidName(events.UserChannel(userID)) {
		return Session{}, &events.FieldError{Field: "userId",
			Reason: fmt.Sprintf("must be 1 to %d characters of [A-Za-z0-9:_.-]", events.MaxNameLen-len(events.UserChannel("")))}
	}
	if ttl < time.Millisecond {
		return Session{}, &events.FieldError{Field: "ttl", Reason: "must be at least 1ms"}
	}
	return Session{
		ID:        newToken(),
		UserID:    userID,
		Email:     email,
		Plan:      plan,
		ExpiresAt: now.UnixMilli() + ttl.Milliseconds(),
	}, nil
}

// encode returns the classic session JSON of s (without its id).
func encode(s Session) []byte {
	b, err := json.Marshal(s)
	if err != nil {
		// Unreachable: Session has only string and int64 fields.
		panic(fmt.Sprintf("session: encode: %v", err))
	}
	return b
}

// decode parses the classic session JSON (see parse) and checks it against
// now. It returns the session (without its ID) or an error that wraps
// ErrUnusable (unusable JSON) or is ErrExpired (expiresAt <= now).
func decode(data []byte, now time.Time) (Session, error) {
	s, err := parse(data)
	if err != nil {
		return Session{}, err
	}
	if s.Expired(now) {
		return Session{}, ErrExpired
	}
	return s, nil
}

// parse decodes the classic session JSON
// {"userId","email","plan","expiresAt"} without looking at the time. Unknown
// fields are ignored. userId must be a non-empty string or an integer
// (apps that JSON.stringify a numeric id write one), which is returned in
// decimal; expiresAt must be a number of milliseconds (a fraction is
// dropped). email and plan may be missing or null. Any other shape gives an
// error wrapping ErrUnusable; its text never includes the input.
func parse(data []byte) (Session, error) {
	var w struct {
		UserID    json.RawMessage `json:"userId"`
		Email     *string         `json:"email"`
		Plan      *string         `json:"plan"`
		ExpiresAt json.RawMessage `json:"expiresAt"`
	}
	if err := json.Unmarshal(data, &w); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return Session{}, fmt.Errorf("%w: syntax error at offset %d", ErrUnusable, syn.Offset)
		}
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) {
			return Session{}, fmt.Errorf("%w: %s is a JSON %s", ErrUnusable, fieldName(typ.Field), typ.Value)
		}
		return Session{}, ErrUnusable
	}
	user, err := parseUserID(w.UserID)
	if err != nil {
		return Session{}, fmt.Errorf("%w: %w", ErrUnusable, err)
	}
	exp, err := parseMillis(w.ExpiresAt)
	if err != nil {
		return Session{}, fmt.Errorf("%w: %w", ErrUnusable, err)
	}
	s := Session{UserID: user, ExpiresAt: exp}
	if w.Email != nil {
		s.Email = *w.Email
	}
	if w.Plan != nil {
		s.Plan = *w.Plan
	}
	return s, nil
}

func fieldName(f string) string {
	if f == "" {
		return "the session"
	}
	return f
}

func parseUserID(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", errors.New("missing userId")
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", errors.New("userId is not a valid string")
		}
		if s == "" {
			return "", errors.New("missing userId")
		}
		if !events.ValidName(events.UserChannel(s)) {
			return "", fmt.Errorf("userId cannot form a channel name: user:{userId} must be at most %d characters of [A-Za-z0-9:_.-]",
				events.MaxNameLen)
		}
		return s, nil
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return "", errors.New("userId is neither a string nor an integer")
	}
	return strconv.FormatInt(n, 10), nil
}

func parseMillis(raw json.RawMessage) (int64, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, errors.New("missing expiresAt")
	}
	if n, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
		return n, nil
	}
	if raw[0] == '"' || raw[0] == '{' || raw[0] == '[' || raw[0] == 't' || raw[0] == 'f' {
		return 0, errors.New("expiresAt is not a number")
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	// 2^63 is exact as a float64; int64 conversion of anything outside
	// [-2^63, 2^63) is implementation-defined.
	if err != nil || math.IsNaN(f) || f < -(1<<63) || f >= 1<<63 {
		return 0, errors.New("expiresAt is not a number of milliseconds in range")
	}
	return int64(f), nil
}
