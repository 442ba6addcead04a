package gateway

import (
	"bytes"
	"errors"
	"testing"

	"github.com/heraldgw/herald/internal/events"
)

// FuzzDecodeFrame: no client frame panics the decoder, and whatever it
// accepts has a type.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"subscribe","ref":1,"channel":"effect:x","since":"1-0"}`,
		`{"type":"ping","ref":3}`,
		`{"type":"unsubscribe","ref":2,"channel":"public:a"}`,
		`{}`, `null`, `[]`, `{"type":1}`, `{"type":"ping","ref":1e400}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := decodeFrame(b)
		if err == nil && in.Type == "" {
			t.Fatalf("accepted %q without a type", b)
		}
	})
}

// FuzzDecodePublication: no publish body panics the decoder; every refusal
// is an *apiError with a status of 4xx, and every acceptance is valid.
func FuzzDecodePublication(f *testing.F) {
	for _, s := range []string{
		`{"channel":"user:42","event":"effect.complete","data":{"a":1}}`,
		`{"channel":"user:42","event":"e"}`,
		`{"channel":"user:42","event":"e","data":null} {}`,
		`{"channel":5}`, `{"dta":1}`, `{"channel":"user:42","event":"e","data":"\u0000"}`, ``, `{`,
		`{"channel":"user:1","channel":"user:2","event":"e"}`, `{"Channel":"user:1","event":"e"}`,
		`{"channel":"user:1","event":"e","data":{"a":1,"a":2}}`, `{"channel":[{"x":1,"x":2}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p events.Publication
		err := decodeJSON(bytes.NewReader(b), &p)
		if err == nil {
			err = p.Validate()
			var fe *events.FieldError
			if err != nil && !errors.As(err, &fe) {
				t.Fatalf("Validate(%q) = %v, want a *FieldError", b, err)
			}
			return
		}
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status < 400 || ae.Status >= 500 {
			t.Fatalf("decodeJSON(%q) = %v, want a 4xx *apiError", b, err)
		}
	})
}
