package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"reflect"
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

// errNoVerdict stops strictFields where the JSON does not have the shape of
// the target: the decoder itself then reports the error.
var errNoVerdict = errors.New("no verdict")

// strictFields refuses what encoding/json would let pass silently in data
// about to be decoded into a value of type t: an object key given twice
// (the decoder keeps the last) and a key naming a field in another case
// than its own (the decoder matches case-insensitively). It looks at the
// objects that decode into structs, nested ones included, and leaves
// values that decode into json.RawMessage or interfaces (event data)
// alone: those are the publisher's. Errors are *apiError 400s naming the
// field; JSON that is malformed, or shaped otherwise than t, gets no
// verdict here.
func strictFields(data []byte, t reflect.Type) error {
	err := checkValue(json.NewDecoder(bytes.NewReader(data)), t, "")
	if errors.Is(err, errNoVerdict) {
		return nil
	}
	return err
}

var rawMessageType = reflect.TypeFor[json.RawMessage]()

// checkValue checks the next JSON value of dec against type t; path names it.
func checkValue(dec *json.Decoder, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var open json.Delim
	switch {
	case t == rawMessageType:
	case t.Kind() == reflect.Struct:
		open = '{'
	case t.Kind() == reflect.Slice || t.Kind() == reflect.Array:
		open = '['
	}
	if open == 0 {
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return errNoVerdict
		}
		return nil
	}
	tok, err := dec.Token()
	switch {
	case err != nil:
		return errNoVerdict
	case tok == nil: // null
		return nil
	case tok != open:
		return errNoVerdict
	}
	if open == '[' {
		for i := 0; dec.More(); i++ {
			if err := checkValue(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	} else if err := checkObject(dec, t, path); err != nil {
		return err
	}
	if _, err := dec.Token(); err != nil { // the closing delimiter
		return errNoVerdict
	}
	return nil
}

// checkObject checks the members of an object decoding into struct t, up to
// its closing brace.
func checkObject(dec *json.Decoder, t reflect.Type, path string) error {
	fields := jsonFields(t)
	seen := make(map[string]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		key, ok := tok.(string)
		if err != nil || !ok {
			return errNoVerdict
		}
		name := key
		if path != "" {
			name = path + "." + key
		}
		if seen[key] {
			return errBadRequest(name, fmt.Sprintf("field %s is given twice", name))
		}
		seen[key] = true
		ft, known := fields[key]
		if !known {
			for tag := range fields {
				if strings.EqualFold(tag, key) {
					return errBadRequest(name, fmt.Sprintf("unknown field %s (field names are case-sensitive: %s)", key, tag))
				}
			}
			ft = rawMessageType // unknown: the decoder refuses it
		}
		if err := checkValue(dec, ft, name); err != nil {
			return err
		}
	}
	return nil
}

// jsonFields maps the JSON names of struct t's exported fields to their
// types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type, t.NumField())
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}
