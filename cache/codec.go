package cache

import "encoding/json"

// Codec turns cached values into the bytes stored in Redis and back. A
// Codec must be safe for concurrent use, and Unmarshal must accept what
// Marshal produced.
type Codec[V any] interface {
	Marshal(v V) ([]byte, error)
	Unmarshal(data []byte, v *V) error
}

// JSON is the default [Codec]: encoding/json. Entries are stored as plain
// JSON, so other programs can read them with GET.
type JSON[V any] struct{}

// Marshal returns the JSON encoding of v.
func (JSON[V]) Marshal(v V) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes JSON data into v.
func (JSON[V]) Unmarshal(data []byte, v *V) error { return json.Unmarshal(data, v) }
