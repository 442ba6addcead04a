package gateway

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestIDBody: the single publish's answer is byte for byte what echo's
// c.JSON writes for {"id": id}.
func TestIDBody(t *testing.T) {
	for _, id := range []string{"1732600000000-0", "", `a"b\c`, "<&>", "é\u2028"} {
		var want bytes.Buffer
		if err := json.NewEncoder(&want).Encode(map[string]string{"id": id}); err != nil {
			t.Fatal(err)
		}
		if got := idBody(id); !bytes.Equal(got, want.Bytes()) {
			t.Errorf("idBody(%q) = %q, want %q", id, got, want.Bytes())
		}
	}
}

// TestDecodeJSONRefusals: the single walk plus json.Unmarshal refuses what
// the strict Decoder did, naming the same field.
func TestDecodeJSONRefusals(t *testing.T) {
	tests := []struct{ body, field, msg string }{
		{``, "body", "empty body"},
		{` `, "body", "empty body"},
		{`{"channel":"user:1","event":"e","dta":1}`, "dta", "unknown field dta"},
		{`{"":1}`, "", "unknown field "},
		{`{"channel":"user:1","event":"e","data":{"dta":1}}`, "", ""}, // data is the publisher's
		{`{"channel":5}`, "channel", "channel must be string"},
		{`{"channel":"user:1"} {}`, "body", "trailing data after the JSON value"},
		{`{"channel":`, "body", "invalid JSON"},
		{`{"channel":"a","channel":"b"}`, "channel", "field channel is given twice"},
		{`{"Event":"e"}`, "Event", "unknown field Event (field names are case-sensitive: event)"},
	}
	for _, tt := range tests {
		var p struct {
			Channel string          `json:"channel"`
			Event   string          `json:"event"`
			Data    json.RawMessage `json:"data"`
		}
		err := decodeJSON(bytes.NewReader([]byte(tt.body)), &p)
		if tt.msg == "" {
			if err != nil {
				t.Errorf("%s: %v, want accepted", tt.body, err)
			}
			continue
		}
		ae, ok := err.(*apiError)
		if !ok || ae.Field != tt.field || ae.Message != tt.msg {
			t.Errorf("%s: got %#v, want field %q, message %q", tt.body, err, tt.field, tt.msg)
		}
	}
}
