package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
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

// FuzzDecodePublication: no publish or batch body panics the decoder;
// every refusal is an *apiError with a status of 4xx; every acceptance is
// valid and, at the levels Herald reads, names each field once, in its own
// case.
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
	f.Add([]byte(`{"items":[{"channel":"user:1","event":"e"},{"channel":"user:1","event":"e","EVENT":"f"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var batch publishBatch
		if err := decodeJSON(bytes.NewReader(b), &batch); err != nil {
			checkRefusal(t, b, err)
		}
		var p events.Publication
		err := decodeJSON(bytes.NewReader(b), &p)
		if err != nil {
			checkRefusal(t, b, err)
			return
		}
		if keys := topLevelKeys(b); len(keys) != len(slices.Compact(slices.Sorted(slices.Values(keys)))) ||
			slices.ContainsFunc(keys, func(k string) bool { return k != "channel" && k != "event" && k != "data" }) {
			t.Fatalf("accepted %q, whose fields are %q", b, keys)
		}
		err = p.Validate()
		var fe *events.FieldError
		if err != nil && !errors.As(err, &fe) {
			t.Fatalf("Validate(%q) = %v, want a *FieldError", b, err)
		}
	})
}

func checkRefusal(t *testing.T, b []byte, err error) {
	t.Helper()
	var ae *apiError
	if !errors.As(err, &ae) || ae.Status < 400 || ae.Status >= 500 {
		t.Fatalf("decodeJSON(%q) = %v, want a 4xx *apiError", b, err)
	}
}

// topLevelKeys returns the keys of the JSON object b, in order, repeats
// included.
func topLevelKeys(b []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(b))
	var keys []string
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return keys
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return keys
		}
	}
	return keys
}

// FuzzStrictFields compares strictFields, which walks JSON text by hand,
// with a walk over encoding/json's tokens: on valid JSON both find the same
// field given twice or in another case, or neither does.
func FuzzStrictFields(f *testing.F) {
	for _, s := range []string{
		`{"items":[{"channel":"user:1","event":"e","data":{"x":"}\"{","channel":1}},{"channel":"a","\u0063hannel":"b"}]}`,
		`{"items":[{"channel":"user:1","data":[{"event":1},"]"],"Event":"e"}]}`,
		`{"channel":"user:1","event":"e","data":"\\\""} `, `{"items":null}`, `{"items":[null,{}]}`, `[{"channel":1,"channel":2}]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) {
			return
		}
		for _, typ := range []reflect.Type{reflect.TypeFor[*publishBatch](), reflect.TypeFor[*events.Publication]()} {
			got := strictFields(b, typ)
			want := referenceFields(json.NewDecoder(bytes.NewReader(b)), typ, "")
			var gotField string
			if ae, ok := got.(*apiError); ok {
				gotField = ae.Field
			}
			if gotField != want {
				t.Fatalf("%s: strictFields(%s) found %q, the token walk %q", typ, b, gotField, want)
			}
		}
	})
}

// referenceFields returns the name of the first field of the next value
// of dec (decoding into t) that is given twice or in another case, or "".
func referenceFields(dec *json.Decoder, t reflect.Type, path string) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, err := dec.Token()
	if err != nil {
		return ""
	}
	switch {
	case tok == json.Delim('[') && t.Kind() == reflect.Slice && t != rawMessageType:
		for i := 0; dec.More(); i++ {
			if f := referenceFields(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); f != "" {
				return f
			}
		}
	case tok == json.Delim('{') && t.Kind() == reflect.Struct:
		seen := map[string]bool{}
		for dec.More() {
			k, _ := dec.Token()
			key := k.(string)
			name := key
			if path != "" {
				name = path + "." + key
			}
			field, ok := t.FieldByNameFunc(func(n string) bool {
				sf, _ := t.FieldByName(n)
				tag, _ := jsonName(sf)
				return strings.EqualFold(tag, key)
			})
			if !ok {
				var skip json.RawMessage
				dec.Decode(&skip)
				continue
			}
			if tag, _ := jsonName(field); tag != key || seen[key] {
				return name
			}
			seen[key] = true
			if f := referenceFields(dec, field.Type, name); f != "" {
				return f
			}
		}
	case tok == json.Delim('{') || tok == json.Delim('['):
		for dec.More() {
			if tok == json.Delim('{') {
				dec.Token()
			}
			var skip json.RawMessage
			dec.Decode(&skip)
		}
	default:
		return ""
	}
	dec.Token() // the closing delimiter
	return ""
}
