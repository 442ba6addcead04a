package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Publication is one event to publish on one channel.
type Publication struct {
	Channel string          `json:"channel"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
}

// FieldError says which field of a request is wrong and why. Its message is
// safe to show to clients.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Validate checks a publication against PROTOCOL §2 and returns a
// *FieldError naming the first bad field. Data may be empty (it is sent as
// null) but must otherwise be valid JSON in valid UTF-8: a browser fails
// the whole WebSocket on a text message that is not UTF-8.
func (p Publication) Validate() error {
	if _, _, err := ParseChannel(p.Channel); err != nil {
		return &FieldError{Field: "channel", Reason: err.Error()}
	}
	if !ValidName(p.Event) {
		return &FieldError{Field: "event", Reason: "must match [A-Za-z0-9:_.-]{1,128}"}
	}
	if len(p.Data) > 0 && !json.Valid(p.Data) {
		return &FieldError{Field: "data", Reason: "not valid JSON"}
	}
	if !utf8.Valid(p.Data) {
		return &FieldError{Field: "data", Reason: "not valid UTF-8"}
	}
	return nil
}

// Normalized returns p with its data compacted when the data holds a line
// break (JSON whitespace may): frames never contain one, so a WebSocket
// message can carry several frames separated by "\n". Validate p first.
func (p Publication) Normalized() Publication {
	if bytes.ContainsAny(p.Data, "\r\n") {
		var b bytes.Buffer
		if json.Compact(&b, p.Data) == nil {
			p.Data = b.Bytes()
		}
	}
	return p
}

// ImpliedOwner returns the user a publication on an effect channel names
// as the effect's owner: the "userId" of its data (a string or an
// integer), as a completion carries it. It is "" for other channels and
// for data that names no user.
func (p Publication) ImpliedOwner() string {
	if kind, _, _ := ParseChannel(p.Channel); kind != KindEffect || len(p.Data) == 0 {
		return ""
	}
	var d struct {
		UserID json.RawMessage `json:"userId"`
	}
	if json.Unmarshal(p.Data, &d) != nil {
		return ""
	}
	if user, ok := idText(d.UserID); ok && ValidName(user) {
		return user
	}
	return ""
}

// Replay is what a history read returns: the retained events after an id,
// oldest first, whether they are all that was published after it, and the
// owner recorded for the channel (effects only; "" when none).
type Replay struct {
	Events   []Entry
	Complete bool
	Owner    string
}

// data returns the publication's data as it goes on the wire.
func (p Publication) data() []byte {
	if len(p.Data) == 0 {
		return []byte("null")
	}
	return p.Data
}

// Event frame layout, shared by the publish script (which fills in the id
// and ts Redis assigns) and AppendFrame. Channel and event names are
// validated, so they need no escaping.
func frameHead(channel string) string { return `{"type":"event","channel":"` + channel + `","id":"` }

func frameMid(event string, data []byte) string {
	return `","event":"` + event + `","data":` + string(data) + `,"ts":`
}

const frameTail = "}"

// AppendFrame appends the JSON event frame of PROTOCOL §4 to dst:
// {"type":"event","channel":…,"id":…,"event":…,"data":…,"ts":…}.
func AppendFrame(dst []byte, id string, p Publication) []byte {
	ts, _, _ := ParseID(id)
	dst = append(dst, frameHead(p.Channel)...)
	dst = append(dst, id...)
	dst = append(dst, frameMid(p.Event, p.data())...)
	dst = strconv.AppendUint(dst, ts, 10)
	return append(dst, frameTail...)
}

// ParseID splits an event id "{ms}-{seq}" (a Redis stream id) into its parts.
// ms is the publish time in milliseconds since the epoch.
func ParseID(id string) (ms, seq uint64, err error) {
	a, b, ok := strings.Cut(id, "-")
	if !ok {
		return 0, 0, fmt.Errorf("event id %q: missing '-'", id)
	}
	if ms, err = strconv.ParseUint(a, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("event id %q: %w", id, err)
	}
	if seq, err = strconv.ParseUint(b, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("event id %q: %w", id, err)
	}
	return ms, seq, nil
}

// FormatID is the inverse of ParseID.
func FormatID(ms, seq uint64) string {
	return strconv.FormatUint(ms, 10) + "-" + strconv.FormatUint(seq, 10)
}

// CompareIDs orders two valid event ids like strings.Compare.
func CompareIDs(a, b string) int {
	am, as, _ := ParseID(a)
	bm, bs, _ := ParseID(b)
	switch {
	case am < bm, am == bm && as < bs:
		return -1
	case am == bm && as == bs:
		return 0
	}
	return 1
}

// FrameID returns the event id of an event frame built by AppendFrame or
// the publish script, without decoding the JSON: the id follows the
// channel, whose name holds no quote.
func FrameID(frame []byte) (string, bool) {
	const head, mid = `{"type":"event","channel":"`, `","id":"`
	if len(frame) < len(head) || string(frame[:len(head)]) != head {
		return "", false
	}
	rest := frame[len(head):]
	i := bytes.IndexByte(rest, '"')
	if i < 0 || len(rest) < i+len(mid) || string(rest[i:i+len(mid)]) != mid {
		return "", false
	}
	rest = rest[i+len(mid):]
	j := bytes.IndexByte(rest, '"')
	if j <= 0 {
		return "", false
	}
	return string(rest[:j]), true
}

// Frame is the part of an event frame a replica needs to route it.
type Frame struct {
	Type    string          `json:"type"`
	Channel string          `json:"channel"`
	ID      string          `json:"id"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
	TS      int64           `json:"ts"`
}

// Classic is the effect-complete payload existing apps publish on
// effect:complete (PROTOCOL §1). Unknown fields are ignored.
type Classic struct {
	UserEffectID string `json:"userEffectId"`
	ResultURL    string `json:"resultUrl"`
	Timestamp    int64  `json:"timestamp"`
	UserID       string `json:"userId,omitempty"`
	Kind         string `json:"kind,omitempty"` // the effect's name; Herald's own publishers add it
}

// ParseClassic turns a classic effect:complete payload into the publications
// it stands for: one on effect:{userEffectId}, and one on user:{userId} when
// the payload names a user. The classic JSON is the data of both, unchanged.
// Only the two ids are read, so apps that write a numeric userId or a
// timestamp of another type are still understood.
func ParseClassic(payload []byte) ([]Publication, error) {
	var c struct {
		UserEffectID json.RawMessage `json:"userEffectId"`
		UserID       json.RawMessage `json:"userId"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, fmt.Errorf("classic payload: %w", err)
	}
	effect, ok := idText(c.UserEffectID)
	if !ok || effect == "" {
		return nil, &FieldError{Field: "userEffectId", Reason: "missing or not a string"}
	}
	if err := checkID(EffectChannel(effect)); err != nil {
		return nil, &FieldError{Field: "userEffectId", Reason: err.Error()}
	}
	data := json.RawMessage(payload)
	pubs := []Publication{{Channel: EffectChannel(effect), Event: EffectComplete, Data: data}}
	user, ok := idText(c.UserID)
	if !ok {
		return nil, &FieldError{Field: "userId", Reason: "not a string or number"}
	}
	if user != "" {
		if err := checkID(UserChannel(user)); err != nil {
			return nil, &FieldError{Field: "userId", Reason: err.Error()}
		}
		pubs = append(pubs, Publication{Channel: UserChannel(user), Event: EffectComplete, Data: data})
	}
	for _, p := range pubs {
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("classic payload: %w", err)
		}
	}
	return pubs, nil
}

// checkID says why an id cannot make the client channel ch, in words that
// name neither the id nor the channel: a warning about a classic payload
// says which field is wrong without logging an app's data.
func checkID(ch string) error {
	_, _, err := ParseChannel(ch)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrBadChannel):
		return fmt.Errorf("not usable in a channel name: only letters, digits and :_.-, and a channel name of at most %d characters", MaxNameLen)
	default:
		return errors.New("names a reserved channel")
	}
}

// idText reads an id written as a JSON string or integer; absent or null
// gives "". ok is false for any other JSON value.
func idText(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", true
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, true
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		if _, err := n.Int64(); err == nil {
			return n.String(), true
		}
	}
	return "", false
}
