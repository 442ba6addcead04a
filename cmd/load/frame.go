package main

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// The load tool's event data: a per-channel sequence number, the publish
// time (Unix nanoseconds, same machine clock) and padding up to the payload
// size. Both servers pass data through byte for byte, so a reader finds the
// two numbers without decoding the whole frame.
var (
	eventPrefix = []byte(`{"type":"event"`)
	dataMark    = []byte(`"data":{"s":`)
	timeMark    = []byte(`,"t":`)
)

// appendData appends the event data for seq, sent at unixNano, padded with
// 'x' so that the data is size bytes long (when size allows).
func appendData(dst []byte, seq, unixNano int64, size int) []byte {
	start := len(dst)
	dst = append(dst, `{"s":`...)
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, `,"t":`...)
	dst = strconv.AppendInt(dst, unixNano, 10)
	dst = append(dst, `,"p":"`...)
	for pad := size - (len(dst) - start) - 2; pad > 0; pad-- {
		dst = append(dst, 'x')
	}
	return append(dst, `"}`...)
}

// frames calls fn with each frame of a WebSocket message: a message may
// carry several frames separated by '\n'.
func frames(msg []byte, fn func(frame []byte)) {
	for len(msg) > 0 {
		f, rest, _ := bytes.Cut(msg, []byte{'\n'})
		if len(f) > 0 {
			fn(f)
		}
		msg = rest
	}
}

// parseEvent reads the sequence number and publish time of an event frame
// written by this tool. ok is false for other frames.
func parseEvent(f []byte) (seq, unixNano int64, ok bool) {
	if !bytes.HasPrefix(f, eventPrefix) {
		return 0, 0, false
	}
	if i := bytes.Index(f, dataMark); i >= 0 {
		rest := f[i+len(dataMark):]
		if seq, rest, ok = leadingInt(rest); ok && bytes.HasPrefix(rest, timeMark) {
			if unixNano, _, ok = leadingInt(rest[len(timeMark):]); ok {
				return seq, unixNano, true
			}
		}
	}
	// Not in the expected layout: decode it properly.
	var ev struct {
		Data struct {
			S *int64 `json:"s"`
			T int64  `json:"t"`
		} `json:"data"`
	}
	if json.Unmarshal(f, &ev) != nil || ev.Data.S == nil {
		return 0, 0, false
	}
	return *ev.Data.S, ev.Data.T, true
}

func leadingInt(b []byte) (int64, []byte, bool) {
	var n int64
	i := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		n = n*10 + int64(b[i]-'0')
	}
	return n, b[i:], i > 0
}

// frameType returns the "type" of a control frame (welcome, subscribed,
// error…), or "" when it has none.
func frameType(f []byte) string {
	var v struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(f, &v) != nil {
		return ""
	}
	if v.Type == "error" {
		return "error: " + v.Code + " " + v.Message
	}
	return v.Type
}

// seqSet remembers which sequence numbers of its channel a socket has
// received, to count duplicates. Numbers beyond maxSeq are not tracked.
type seqSet []uint64

const maxSeq = 1 << 24

// add marks seq and reports whether it was new.
func (s *seqSet) add(seq int64) bool {
	if seq < 0 || seq >= maxSeq {
		return true
	}
	w := int(seq / 64)
	if w >= len(*s) {
		*s = append(*s, make([]uint64, w+1-len(*s))...)
	}
	bit := uint64(1) << (seq % 64)
	if (*s)[w]&bit != 0 {
		return false
	}
	(*s)[w] |= bit
	return true
}
