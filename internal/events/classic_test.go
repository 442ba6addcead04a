package events

import (
	"errors"
	"strings"
	"testing"
)

func TestParseClassic(t *testing.T) {
	payload := `{"userEffectId":"3f2c","resultUrl":"https://x/y.png","timestamp":1732600000000,"userId":"42","extra":true}`
	pubs, err := ParseClassic([]byte(payload))
	if err != nil {
		t.Fatalf("ParseClassic: %v", err)
	}
	if len(pubs) != 2 || pubs[0].Channel != "effect:3f2c" || pubs[1].Channel != "user:42" {
		t.Fatalf("got %+v, want effect:3f2c then user:42", pubs)
	}
	for _, p := range pubs {
		if p.Event != EffectComplete || string(p.Data) != payload {
			t.Errorf("%s: event %q data %s, want %q and the payload unchanged", p.Channel, p.Event, p.Data, EffectComplete)
		}
	}

	for _, bad := range []string{``, `null`, `[]`, `"x"`, `{}`, `{"userEffectId":""}`, `{"userEffectId":"a b"}`, `{"userEffectId":"x:owner"}`, `{"userEffectId":"x","userId":"a\"b"}`} {
		if pubs, err := ParseClassic([]byte(bad)); err == nil {
			t.Errorf("ParseClassic(%s) = %+v, want an error", bad, pubs)
		}
	}
	// Node apps often write a numeric userId or a string timestamp.
	pubs, err = ParseClassic([]byte(`{"userEffectId":"e1","userId":42,"timestamp":"soon"}`))
	if err != nil || len(pubs) != 2 || pubs[1].Channel != "user:42" {
		t.Errorf("numeric userId: got %+v, %v; want user:42", pubs, err)
	}
	for _, bad := range []string{`{"userEffectId":"e1","userId":[42]}`, `{"userEffectId":"e1","userId":4.2}`} {
		if pubs, err := ParseClassic([]byte(bad)); err == nil {
			t.Errorf("ParseClassic(%s) = %+v, want an error", bad, pubs)
		}
	}
}

// A refused classic payload names the field that is wrong (the gateway logs
// the error), and not the id itself: an effect id is a capability.
func TestParseClassicNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		payload, field, reason string
	}{
		{`{"resultUrl":"u"}`, "userEffectId", "missing"},
		{`{"userEffectId":7.5}`, "userEffectId", "not a string"},
		{`{"userEffectId":"…","resultUrl":"…","timestamp":1}`, "userEffectId", "not usable in a channel name"},
		{`{"userEffectId":"a b"}`, "userEffectId", "not usable in a channel name"},
		{`{"userEffectId":"x:owner"}`, "userEffectId", "reserved"},
		{`{"userEffectId":"complete"}`, "userEffectId", "reserved"},
		{`{"userEffectId":"e1","userId":"…"}`, "userId", "not usable in a channel name"},
		{`{"userEffectId":"e1","userId":[1]}`, "userId", "not a string or number"},
	} {
		_, err := ParseClassic([]byte(tc.payload))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(fe.Reason, tc.reason) {
			t.Errorf("ParseClassic(%s): got %v, want a *FieldError on %s saying %q", tc.payload, err, tc.field, tc.reason)
			continue
		}
		if strings.Contains(err.Error(), "…") || strings.Contains(err.Error(), "a b") {
			t.Errorf("ParseClassic(%s): the error %q repeats the id", tc.payload, err)
		}
	}
}

// FuzzParseClassic checks that no payload panics and that whatever is
// accepted is publishable as is.
func FuzzParseClassic(f *testing.F) {
	f.Add([]byte(`{"userEffectId":"3f2c","resultUrl":"https://x/y.png","timestamp":1,"userId":"42"}`))
	f.Add([]byte(`{"userEffectId":"a","userId":""}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		pubs, err := ParseClassic(payload)
		if err != nil {
			return
		}
		for _, p := range pubs {
			if err := p.Validate(); err != nil {
				t.Fatalf("accepted %q but %s is invalid: %v", payload, p.Channel, err)
			}
		}
	})
}

func TestFrameID(t *testing.T) {
	p := Publication{Channel: "user:42", Event: "e", Data: []byte(`{"id":"not this one"}`)}
	if id, ok := FrameID(AppendFrame(nil, "1732600000000-7", p)); !ok || id != "1732600000000-7" {
		t.Errorf("FrameID = %q, %v; want 1732600000000-7", id, ok)
	}
	for _, bad := range []string{``, `{}`, `{"type":"event","channel":"x"}`, `{"type":"event","channel":"x","id":""}`, `{"type":"pong"}`} {
		if id, ok := FrameID([]byte(bad)); ok {
			t.Errorf("FrameID(%s) = %q, want not ok", bad, id)
		}
	}
}

// FuzzParseChannel: no name panics the parser; an accepted name follows the
// name rule, has a known prefix, and the id is what follows it.
func FuzzParseChannel(f *testing.F) {
	for _, s := range []string{"user:42", "effect:3f2c", "public:news", "effect:complete", "effect:x:owner", "admin:x", "user:", "", "a b", "user:é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		kind, id, err := ParseChannel(name)
		if err != nil {
			return
		}
		if !ValidName(name) || id == "" || kind == KindInvalid || name != Prefix(name)+":"+id {
			t.Fatalf("ParseChannel(%q) = %v, %q, nil; want a refusal", name, kind, id)
		}
	})
}
