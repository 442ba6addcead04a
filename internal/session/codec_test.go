package session

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

var decodeNow = time.UnixMilli(1_732_600_000_000)

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Session
		err  error
	}{
		{"classic", `{"userId":"42","email":"a@b.c","plan":"pro","expiresAt":1732600060000}`,
			Session{UserID: "42", Email: "a@b.c", Plan: "pro", ExpiresAt: 1732600060000}, nil},
		{"extra fields", `{"userId":"42","expiresAt":1732600060000,"extra":{"x":[1,2]},"roles":["a"]}`,
			Session{UserID: "42", ExpiresAt: 1732600060000}, nil},
		{"numeric user", `{"userId":42,"expiresAt":1732600060000}`, Session{UserID: "42", ExpiresAt: 1732600060000}, nil},
		{"fractional ms", `{"userId":"u","expiresAt":1732600060000.7}`, Session{UserID: "u", ExpiresAt: 1732600060000}, nil},
		{"exponent ms", `{"userId":"u","expiresAt":1.73260006e12}`, Session{UserID: "u", ExpiresAt: 1732600060000}, nil},
		{"null email", `{"userId":"u","email":null,"expiresAt":1732600060000}`, Session{UserID: "u", ExpiresAt: 1732600060000}, nil},
		{"at expiresAt", `{"userId":"u","expiresAt":1732600000000}`, Session{}, ErrExpired},
		{"in seconds", `{"userId":"u","expiresAt":1732600060}`, Session{}, ErrExpired},
		{"not JSON", `nope`, Session{}, ErrNotFound},
		{"empty", ``, Session{}, ErrNotFound},
		{"null", `null`, Session{}, ErrNotFound},
		{"array", `[1]`, Session{}, ErrNotFound},
		{"no user", `{"email":"a@b.c","expiresAt":1732600060000}`, Session{}, ErrNotFound},
		{"empty user", `{"userId":"","expiresAt":1732600060000}`, Session{}, ErrNotFound},
		{"float user", `{"userId":4.2,"expiresAt":1732600060000}`, Session{}, ErrNotFound},
		{"object user", `{"userId":{},"expiresAt":1732600060000}`, Session{}, ErrNotFound},
		{"no expiresAt", `{"userId":"u"}`, Session{}, ErrNotFound},
		{"string expiresAt", `{"userId":"u","expiresAt":"1732600060000"}`, Session{}, ErrNotFound},
		{"huge expiresAt", `{"userId":"u","expiresAt":1e300}`, Session{}, ErrNotFound},
		{"numeric email", `{"userId":"u","email":5,"expiresAt":1732600060000}`, Session{}, ErrNotFound},
		{"user not a channel name", `{"userId":"has space","expiresAt":1732600060000}`, Session{}, ErrUnusable},
		{"user too long", `{"userId":"` + strings.Repeat("u", 124) + `","expiresAt":1732600060000}`, Session{}, ErrUnusable},
		{"longest user", `{"userId":"` + strings.Repeat("u", 123) + `","expiresAt":1732600060000}`, Session{UserID: strings.Repeat("u", 123), ExpiresAt: 1732600060000}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decode([]byte(tc.in), decodeNow)
			if !errors.Is(err, tc.err) || (err != nil) != (tc.err != nil) {
				t.Fatalf("decode(%s): got error %v, want %v", tc.in, err, tc.err)
			}
			if got != tc.want {
				t.Fatalf("decode(%s): got %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

// The error text of an unusable session must not repeat its content.
func TestDecodeErrorHidesInput(t *testing.T) {
	for _, in := range []string{
		`{"userId":"secret-user","expiresAt":"secret-exp"}`,
		`{"userId":["secret-user"],"expiresAt":1}`,
		`{"userId":"u","expiresAt":1,"email":{"secret":1}}`,
		`secret`,
		`{"userId":12secret}`,
	} {
		_, err := decode([]byte(in), decodeNow)
		if err == nil || strings.Contains(err.Error(), "secret") {
			t.Errorf("decode(%s): error %q", in, err)
		}
	}
}

func FuzzDecodeSession(f *testing.F) {
	for _, seed := range []string{
		`{"userId":"42","email":"a@b.c","plan":"pro","expiresAt":1732600060000}`,
		`{"userId":42,"expiresAt":1732600060000.5,"extra":{"x":1}}`,
		`{"userId":"u","expiresAt":1e300}`,
		`{"userId":-9223372036854775808,"expiresAt":-1}`,
		`{"USERID":"u","expiresat":9007199254740993}`,
		`{"userId":"\ud800","email":"\u0000"}`,
		`null`, `[]`, `""`, `{`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := decode(data, decodeNow)
		if err != nil {
			if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrExpired) {
				t.Fatalf("decode: error %v is neither ErrNotFound nor ErrExpired", err)
			}
			if s != (Session{}) {
				t.Fatalf("decode: error %v with session %+v", err, s)
			}
			return
		}
		if s.UserID == "" || s.Expired(decodeNow) || s.ID != "" {
			t.Fatalf("decode: accepted %+v", s)
		}
		// What Create would write for it reads back the same.
		again, err := decode(encode(s), decodeNow)
		if err != nil || again != s {
			t.Fatalf("round trip: got %+v, %v; want %+v", again, err, s)
		}
		if _, err := json.Marshal(s); err != nil {
			t.Fatal(err)
		}
	})
}
