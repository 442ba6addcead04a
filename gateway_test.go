package herald_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/heraldgw/herald"
)

// fakeGateway is an httptest server that implements the publish API of
// PROTOCOL §6 in front of a RedisPublisher, as the real gateway will: API key
// check, JSON bodies, Idempotency-Key passed through, errors as
// {"error":{"code","message","field"}}. It records the requests it got.
type fakeGateway struct {
	*httptest.Server
	apiKey string
	pub    herald.Publisher

	mu   sync.Mutex // guards reqs
	reqs []*http.Request
}

func startGateway(t *testing.T, apiKey string, pub herald.Publisher) *fakeGateway {
	t.Helper()
	g := &fakeGateway{apiKey: apiKey, pub: pub}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/publish", func(w http.ResponseWriter, r *http.Request) {
		var m wireMessage
		if !g.accept(w, r, &m) {
			return
		}
		id, err := g.pub.Publish(r.Context(), m.Channel, m.Event, m.Data, idemKey(r))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"id": id})
	})
	mux.HandleFunc("POST /api/publish/batch", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Items []wireMessage `json:"items"`
		}
		if !g.accept(w, r, &body) {
			return
		}
		msgs := make([]herald.Message, len(body.Items))
		for i, m := range body.Items {
			msgs[i] = herald.Message{Channel: m.Channel, Event: m.Event, Data: m.Data}
		}
		ids, err := g.pub.PublishBatch(r.Context(), msgs, idemKey(r))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string][]string{"ids": ids})
	})
	g.Server = httptest.NewServer(mux)
	t.Cleanup(g.Close)
	return g
}

type wireMessage struct {
	Channel string          `json:"channel"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
}

// accept records r, checks its API key and decodes its body into v; on
// failure it has answered.
func (g *fakeGateway) accept(w http.ResponseWriter, r *http.Request, v any) bool {
	g.mu.Lock()
	g.reqs = append(g.reqs, r.Clone(r.Context()))
	g.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+g.apiKey {
		writeJSON(w, http.StatusUnauthorized, errorBody("unauthorized", "wrong API key", ""))
		return false
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		writeJSON(w, http.StatusUnsupportedMediaType, errorBody("bad_request", "Content-Type "+ct, ""))
		return false
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody("bad_request", err.Error(), ""))
		return false
	}
	return true
}

// requests returns the requests received so far.
func (g *fakeGateway) requests() []*http.Request {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]*http.Request(nil), g.reqs...)
}

func idemKey(r *http.Request) herald.PublishOption {
	return herald.IdempotencyKey(r.Header.Get("Idempotency-Key"))
}

func errorBody(code, msg, field string) any {
	type e struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field,omitempty"`
	}
	return map[string]e{"error": {code, msg, field}}
}

func writeError(w http.ResponseWriter, err error) {
	var fe *herald.FieldError
	if errors.As(err, &fe) {
		writeJSON(w, http.StatusBadRequest, errorBody("bad_request", fe.Reason, fe.Field))
		return
	}
	writeJSON(w, http.StatusInternalServerError, errorBody("internal", "publish failed", ""))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
