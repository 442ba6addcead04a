package gateway

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/hub"
	"github.com/heraldgw/herald/ratelimit"
)

var benchPublication = []byte(`{"channel":"user:42","event":"effect.complete","data":{"userEffectId":"6b1f8c1e-3d2a-4b5c-9e7f-0a1b2c3d4e5f",` +
	`"resultUrl":"https://cdn.example.com/r/6b1f8c1e.png","timestamp":1732600000000,"userId":"42"}}`)

// BenchmarkDecodePublication: the whole decode of a typical publish body,
// and the field-name check alone (which runs on every publish).
func BenchmarkDecodePublication(b *testing.B) {
	b.Run("decodeJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var p events.Publication
			if err := decodeJSON(bytes.NewReader(benchPublication), &p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("strictFields", func(b *testing.B) {
		b.ReportAllocs()
		t := reflect.TypeFor[*events.Publication]()
		for b.Loop() {
			if err := strictFields(benchPublication, t); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPublishHandler: one POST /api/publish through the whole HTTP
// handler (echo, API key, decode, publish limit, the memory broker), with
// no subscriber, so what is left is the request's own cost.
func BenchmarkPublishHandler(b *testing.B) {
	ts := newTestServerWith(b, nil, hub.Config{})
	ts.publishes, _ = ratelimit.NewMemoryTokenBucket(ratelimit.TokenBucketConfig{Rate: 1e9, Burst: 1e9}, nil)
	h := ts.Handler()
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/api/publish", bytes.NewReader(benchPublication))
		req.Header.Set("Authorization", "Bearer "+testKey)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}
