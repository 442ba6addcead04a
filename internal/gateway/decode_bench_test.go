package gateway

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/heraldgw/herald/internal/events"
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
