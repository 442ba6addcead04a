package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"reflect"
	"strconv"
	"strings"
)

// requireJSON refuses a request body that is not declared JSON (415):
// Content-Type must be application/json, with no charset but UTF-8. A
// request without a body passes; what it lacks is for the decoder to say.
// Browsers send other types cross-site without asking (forms, text/plain),
// so this check also keeps cross-site forms out of the JSON endpoints.
func requireJSON(r *http.Request) error {
	if r.ContentLength == 0 {
		return nil
	}
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return errNotJSON
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return errNotJSON
	}
	return nil
}

// strictFields refuses what encoding/json would let pass silently in data
// about to be decoded into a value of type t: an object key given twice
// (the decoder keeps the last) and a key naming a field in another case
// than its own (the decoder matches case-insensitively). It looks at the
// objects that decode into structs, nested ones included, and skips values
// that decode into anything else (event data is the publisher's own).
// Errors are *apiError 400s naming the field. JSON that is malformed, or
// shaped otherwise than t, gets no verdict here: the decoder reports it.
//
// It reads data in place and allocates only to report: it runs on every
// publish.
func strictFields(data []byte, t reflect.Type) error {
	s := jsonScan{b: data}
	return fieldVerdict(s.check(t))
}

// fieldVerdict is the 400 for a jsonScan's *fieldError; nil for anything
// else.
func fieldVerdict(err error) error {
	fe, ok := err.(*fieldError)
	switch {
	case !ok:
		return nil
	case fe.twice:
		return errBadRequest(fe.name, fmt.Sprintf("field %s is given twice", fe.name))
	}
	return errBadRequest(fe.name, fmt.Sprintf("unknown field %s (field names are case-sensitive: %s)", fe.key, fe.tag))
}

// fieldError is a verdict on a field; its name is completed, from the
// field up, as the walk unwinds.
type fieldError struct {
	name     string // "items[1].event"
	key, tag string // the key given, and the field's own name
	twice    bool   // given twice, rather than in another case
}

func (e *fieldError) Error() string { return e.name }

// under prefixes the name of a *fieldError with the member key, or the
// element [index], holding the field; other errors pass as they are.
func under(err error, key string, index int) error {
	e, ok := err.(*fieldError)
	if !ok {
		return err
	}
	sep := "."
	if strings.HasPrefix(e.name, "[") {
		sep = ""
	}
	if key == "" {
		key = "[" + strconv.Itoa(index) + "]"
	}
	e.name = key + sep + e.name
	return e
}

// errNoVerdict stops a jsonScan where the text is not what it expects.
var errNoVerdict = errors.New("no verdict")

// jsonScan walks JSON text just enough to see object keys; it checks
// little else, since the decoder runs after it.
type jsonScan struct {
	b       []byte
	i       int
	unknown *string // the first key that names no field, as the decoder names it
}

// check walks the next value as a value of type t.
func (s *jsonScan) check(t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	s.space()
	switch {
	case s.literal("null"):
		return nil
	case t.Kind() == reflect.Struct && s.peek('{'):
		return s.checkObject(t)
	case (t.Kind() == reflect.Slice && t != rawMessageType || t.Kind() == reflect.Array) && s.peek('['):
		s.i++
		for n := 0; ; n++ {
			if s.space(); s.peek(']') {
				s.i++
				return nil
			}
			if n > 0 && !s.expect(',') {
				return errNoVerdict
			}
			if err := s.check(t.Elem()); err != nil {
				return under(err, "", n)
			}
		}
	}
	if !s.skip() {
		return errNoVerdict
	}
	return nil
}

// checkObject walks an object decoding into struct t.
func (s *jsonScan) checkObject(t reflect.Type) error {
	s.i++           // the {
	var seen uint64 // the fields given, by index (structs here have few)
	for n := 0; ; n++ {
		if s.space(); s.peek('}') {
			s.i++
			return nil
		}
		if n > 0 && !s.expect(',') {
			return errNoVerdict
		}
		s.space()
		key, ok := s.key()
		if !ok || !s.expect(':') {
			return errNoVerdict
		}
		f, exact := jsonField(t, key)
		switch {
		case f < 0: // unknown: refused once the decoder had its say
			if s.unknown == nil {
				k := string(key)
				s.unknown = &k
			}
			if !s.skip() {
				return errNoVerdict
			}
			continue
		case !exact:
			tag, _ := jsonName(t.Field(f))
			return &fieldError{name: string(key), key: string(key), tag: tag}
		case f < 64 && seen&(1<<f) != 0:
			return &fieldError{name: string(key), twice: true}
		}
		seen |= 1 << min(f, 63)
		if err := s.check(t.Field(f).Type); err != nil {
			return under(err, string(key), 0)
		}
	}
}

// jsonField returns the index of struct t's field named key in JSON, and
// whether key names it exactly rather than in another case; -1 if none.
func jsonField(t reflect.Type, key []byte) (int, bool) {
	for i := range t.NumField() {
		if name, ok := jsonName(t.Field(i)); ok && name == string(key) {
			return i, true
		}
	}
	for i := range t.NumField() {
		if name, ok := jsonName(t.Field(i)); ok && strings.EqualFold(name, string(key)) {
			return i, false
		}
	}
	return -1, false
}

// jsonName is a struct field's name in JSON; false for fields JSON skips.
func jsonName(f reflect.StructField) (string, bool) {
	if !f.IsExported() {
		return "", false
	}
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	switch name {
	case "-":
		return "", false
	case "":
		return f.Name, true
	}
	return name, true
}

var rawMessageType = reflect.TypeFor[json.RawMessage]()

func (s *jsonScan) space() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
}

func (s *jsonScan) peek(c byte) bool { return s.i < len(s.b) && s.b[s.i] == c }

func (s *jsonScan) expect(c byte) bool {
	s.space()
	if !s.peek(c) {
		return false
	}
	s.i++
	return true
}

func (s *jsonScan) literal(lit string) bool {
	if !bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
		return false
	}
	s.i += len(lit)
	return true
}

// key reads a string and returns it unescaped, as the decoder will see it.
func (s *jsonScan) key() ([]byte, bool) {
	start := s.i
	if !s.skipString() {
		return nil, false
	}
	raw := s.b[start+1 : s.i-1]
	if bytes.IndexByte(raw, '\\') < 0 {
		return raw, true
	}
	var k string // escapes are rare: let the decoder's rules apply
	err := json.Unmarshal(s.b[start:s.i], &k)
	return []byte(k), err == nil
}

// skipString skips a string, quotes included.
func (s *jsonScan) skipString() bool {
	if !s.peek('"') {
		return false
	}
	for s.i++; s.i < len(s.b); s.i++ {
		switch s.b[s.i] {
		case '\\':
			s.i++
		case '"':
			s.i++
			return true
		}
	}
	return false
}

// skip skips one value of any kind.
func (s *jsonScan) skip() bool {
	s.space()
	if s.i >= len(s.b) {
		return false
	}
	switch s.b[s.i] {
	case '"':
		return s.skipString()
	case '{', '[':
		for depth := 0; s.i < len(s.b); s.i++ {
			switch s.b[s.i] {
			case '"':
				if !s.skipString() {
					return false
				}
				s.i-- // the loop steps past the closing quote again
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					s.i++
					return true
				}
			}
		}
		return false
	}
	start := s.i // a number, true, false or null
	for s.i < len(s.b) && !strings.ContainsRune(",}] \t\r\n", rune(s.b[s.i])) {
		s.i++
	}
	return s.i > start
}
