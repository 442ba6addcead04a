package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/heraldgw/herald/internal/events"
)

// An SSE stream's resume cursor (PROTOCOL §3a) says, for every channel of
// the stream, the newest event id the client got, by position: slot 0 is
// the user's channel, slot i the i-th channel= of the stream's URL. Written:
//
//	"1" then, per slot, "." and either nothing or "{ms}-{seq}" in base 36
//
// e.g. "1.lq2x5kq0-3..lq2x5kzz-0" (the third channel has no id yet).
// Trailing empty slots are left out. The "1" is the format's version. Event
// ids are "{ms}-{seq}" in decimal (§5); base 36 keeps a cursor of many
// channels short enough for a header.
const cursorVersion = "1"

// maxIDPart is the longest base-36 part of an id: 2^64-1 has 13 digits.
const maxIDPart = 13

var errBadCursor = errors.New("malformed resume cursor")

// cursorSlot is one channel's place in a cursor.
type cursorSlot struct {
	ms, seq uint64
	set     bool
}

// id returns the slot as an event id, "" when empty.
func (s cursorSlot) id() string {
	if !s.set {
		return ""
	}
	return events.FormatID(s.ms, s.seq)
}

// after reports whether (ms, seq) comes after the slot (always, when empty).
func (s cursorSlot) after(ms, seq uint64) bool {
	return !s.set || ms > s.ms || ms == s.ms && seq > s.seq
}

// parseCursor reads a cursor for a stream of n slots; "" is a cursor of n
// empty slots. A cursor with more slots than n, or longer than n slots can
// be, is malformed.
func parseCursor(s string, n int) ([]cursorSlot, error) {
	slots := make([]cursorSlot, n)
	if s == "" {
		return slots, nil
	}
	if len(s) > len(cursorVersion)+n*(2+2*maxIDPart) {
		return nil, errBadCursor
	}
	rest, ok := strings.CutPrefix(s, cursorVersion)
	if !ok || rest != "" && rest[0] != '.' {
		return nil, errBadCursor
	}
	for i := 0; rest != ""; i++ {
		if i >= n {
			return nil, errBadCursor
		}
		rest = rest[1:] // the '.'
		part := rest
		if j := strings.IndexByte(rest, '.'); j >= 0 {
			part, rest = rest[:j], rest[j:]
		} else {
			rest = ""
		}
		if part == "" {
			continue
		}
		ms, seq, ok := strings.Cut(part, "-")
		if !ok {
			return nil, errBadCursor
		}
		var err error
		if slots[i].ms, err = parseIDPart(ms); err != nil {
			return nil, err
		}
		if slots[i].seq, err = parseIDPart(seq); err != nil {
			return nil, err
		}
		slots[i].set = true
	}
	return slots, nil
}

func parseIDPart(s string) (uint64, error) {
	if s == "" || len(s) > maxIDPart {
		return 0, errBadCursor
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'z') {
			return 0, errBadCursor
		}
	}
	v, err := strconv.ParseUint(s, 36, 64)
	if err != nil {
		return 0, errBadCursor
	}
	return v, nil
}

// streamCursor is a stream's cursor as its frames are written. It is fed
// every frame in the order they go out, so the id written with a frame
// covers exactly what the client has been sent.
type streamCursor struct {
	channels []string // by slot; a channel listed twice has two slots, kept equal
	slots    []cursorSlot
}

const (
	eventHead      = `{"type":"event","channel":"`
	welcomeHead    = `{"type":"welcome",`
	subscribedHead = `{"type":"subscribed",`
)

// note moves the cursor past frame and reports whether the frame carries
// the cursor as its id: event frames move their channel to their id;
// welcome and subscribed frames give a channel that has no id yet the
// `last` they name (every event after it follows them). Other frames
// (errors, gaps, notices) neither move it nor carry it.
func (c *streamCursor) note(frame []byte) bool {
	switch {
	case bytes.HasPrefix(frame, []byte(eventHead)):
		rest := frame[len(eventHead):]
		id, ok := events.FrameID(frame)
		ms, seq, err := events.ParseID(id)
		if i := bytes.IndexByte(rest, '"'); ok && err == nil && i >= 0 {
			c.advance(rest[:i], ms, seq)
		}
		return true
	case bytes.HasPrefix(frame, []byte(welcomeHead)), bytes.HasPrefix(frame, []byte(subscribedHead)):
		var r struct {
			Type    string `json:"type"`
			Channel string `json:"channel"`
			Last    string `json:"last"`
		}
		if json.Unmarshal(frame, &r) != nil {
			return true
		}
		if r.Type == "welcome" {
			r.Channel = c.channels[0]
		}
		if ms, seq, err := events.ParseID(r.Last); err == nil {
			c.seed(r.Channel, ms, seq)
		}
		return true
	}
	return false
}

// advance moves every slot of channel to (ms, seq), unless it is there or
// beyond already.
func (c *streamCursor) advance(channel []byte, ms, seq uint64) {
	for i, ch := range c.channels {
		if string(channel) == ch && c.slots[i].after(ms, seq) {
			c.slots[i] = cursorSlot{ms: ms, seq: seq, set: true}
		}
	}
}

// seed gives channel (ms, seq) when it has no id yet. A channel that has
// one keeps it: the `last` of a subscribed frame for a channel the stream
// has already (listed twice) may be ahead of the events still queued for it.
func (c *streamCursor) seed(channel string, ms, seq uint64) {
	for i, ch := range c.channels {
		if ch == channel && c.slots[i].set {
			return
		}
	}
	for i, ch := range c.channels {
		if ch == channel {
			c.slots[i] = cursorSlot{ms: ms, seq: seq, set: true}
		}
	}
}

// appendTo appends the cursor in its written form.
func (c *streamCursor) appendTo(dst []byte) []byte {
	dst = append(dst, cursorVersion...)
	n := len(c.slots)
	for n > 0 && !c.slots[n-1].set {
		n--
	}
	for _, s := range c.slots[:n] {
		dst = append(dst, '.')
		if s.set {
			dst = strconv.AppendUint(dst, s.ms, 36)
			dst = append(dst, '-')
			dst = strconv.AppendUint(dst, s.seq, 36)
		}
	}
	return dst
}
