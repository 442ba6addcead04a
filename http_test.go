package herald_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/heraldgw/herald"
)

// cannedGateway answers every request with status and body and hands the
// request and its body to the test.
func cannedGateway(t *testing.T, status int, body string) (*httptest.Server, <-chan *http.Request, <-chan string) {
	t.Helper()
	reqs, bodies := make(chan *http.Request, 10), make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		reqs <- r
		bodies <- string(b)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, reqs, bodies
}

func newHTTP(t *testing.T, base, key string) *herald.HTTPPublisher {
	t.Helper()
	p, err := herald.NewHTTPPublisher(base, key, herald.HTTPConfig{})
	if err != nil {
		t.Fatalf("NewHTTPPublisher(%q): %v", base, err)
	}
	return p
}

func TestHTTPPublishRequest(t *testing.T) {
	srv, reqs, bodies := cannedGateway(t, http.StatusAccepted, `{"id":"1732600000000-0"}`)
	p := newHTTP(t, srv.URL+"/herald/", "s3cret")
	id, err := p.Publish(ctxT(t), "user:42", "effect.complete", map[string]string{"a": "<&>"}, herald.IdempotencyKey("job:7"))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if id != "1732600000000-0" {
		t.Errorf("id: got %q, want 1732600000000-0", id)
	}
	r, body := <-reqs, <-bodies
	for _, c := range [][2]string{
		{r.Method, "POST"},
		{r.URL.Path, "/herald/api/publish"},
		{r.Header.Get("Authorization"), "Bearer s3cret"},
		{r.Header.Get("Content-Type"), "application/json"},
		{r.Header.Get("Idempotency-Key"), "job:7"},
		{strings.TrimSpace(body), `{"channel":"user:42","event":"effect.complete","data":{"a":"<&>"}}`},
	} {
		if c[0] != c[1] {
			t.Errorf("request: got %q, want %q", c[0], c[1])
		}
	}

	// Without a key there is no header.
	if _, err := p.Publish(ctxT(t), "user:42", "x", nil); err != nil {
		t.Fatal(err)
	}
	if r := <-reqs; r.Header.Values("Idempotency-Key") != nil {
		t.Errorf("Idempotency-Key sent without a key: %q", r.Header.Values("Idempotency-Key"))
	}
	if got := <-bodies; strings.TrimSpace(got) != `{"channel":"user:42","event":"x","data":null}` {
		t.Errorf("body: got %s", got)
	}
}

func TestHTTPPublishBatchRequest(t *testing.T) {
	srv, reqs, bodies := cannedGateway(t, http.StatusAccepted, `{"ids":["1-0","1-1"]}`)
	p := newHTTP(t, srv.URL, "k")
	ids, err := herald.PublishEffectComplete(ctxT(t), p, herald.EffectComplete{UserID: "42", UserEffectID: "e1", ResultURL: "https://x/e1.png"}, herald.IdempotencyKey("job:1-0"))
	if err != nil {
		t.Fatalf("PublishEffectComplete: %v", err)
	}
	if strings.Join(ids, ",") != "1-0,1-1" {
		t.Errorf("ids: got %v", ids)
	}
	r, body := <-reqs, <-bodies
	if r.URL.Path != "/api/publish/batch" || r.Header.Get("Idempotency-Key") != "job:1-0" {
		t.Errorf("request: got %s %s key %q", r.Method, r.URL.Path, r.Header.Get("Idempotency-Key"))
	}
	if !strings.HasPrefix(body, `{"items":[{"channel":"effect:e1","event":"effect.complete","data":{"userEffectId":"e1","resultUrl":"https://x/e1.png","timestamp":`) ||
		!strings.Contains(body, `{"channel":"user:42","event":"effect.complete","data":{"userEffectId":"e1"`) {
		t.Errorf("body: got %s", body)
	}

	// An answer with the wrong number of ids is an error, not a short list.
	srv2, _, _ := cannedGateway(t, http.StatusAccepted, `{"ids":["1-0"]}`)
	if _, err := newHTTP(t, srv2.URL, "k").PublishBatch(ctxT(t), []herald.Message{{Channel: "user:1", Event: "a"}, {Channel: "user:2", Event: "a"}}); err == nil {
		t.Error("short id list: got nil error")
	}
}

func TestHTTPErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   herald.APIError
	}{
		{"unauthorized", 401, `{"error":{"code":"unauthorized","message":"wrong API key"}}`,
			herald.APIError{Status: 401, Code: "unauthorized", Message: "wrong API key"}},
		{"bad request with field", 400, `{"error":{"code":"bad_request","message":"must match","field":"items[1].event"}}`,
			herald.APIError{Status: 400, Code: "bad_request", Message: "must match", Field: "items[1].event"}},
		{"too large", 413, `{"error":{"code":"too_large","message":"body over 1 MiB"}}`,
			herald.APIError{Status: 413, Code: "too_large", Message: "body over 1 MiB"}},
		{"proxy page", 502, "<html>Bad Gateway</html>\n",
			herald.APIError{Status: 502, Message: "<html>Bad Gateway</html>"}},
		{"empty body", 503, "",
			herald.APIError{Status: 503, Message: "Service Unavailable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _, _ := cannedGateway(t, tc.status, tc.body)
			p := newHTTP(t, srv.URL, "k")
			_, err := p.Publish(ctxT(t), "user:1", "x", 1)
			var ae *herald.APIError
			if !errors.As(err, &ae) {
				t.Fatalf("got %v, want an *APIError", err)
			}
			if *ae != tc.want {
				t.Errorf("got %+v, want %+v", *ae, tc.want)
			}
			_, err = p.PublishBatch(ctxT(t), []herald.Message{{Channel: "user:1", Event: "x"}})
			if !errors.As(err, &ae) || ae.Status != tc.status {
				t.Errorf("batch: got %v, want an *APIError with status %d", err, tc.status)
			}
		})
	}
}

// TestHTTPWrongKey goes through the fake gateway, which checks keys.
func TestHTTPWrongKey(t *testing.T) {
	g := startGateway(t, "right", nil) // refused before it would publish
	p := newHTTP(t, g.URL, "Wr0ng-K3y")
	_, err := p.Publish(ctxT(t), "user:1", "x", nil)
	var ae *herald.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized || ae.Code != "unauthorized" {
		t.Fatalf("got %v, want a 401 unauthorized *APIError", err)
	}
	if strings.Contains(err.Error(), "Wr0ng-K3y") {
		t.Errorf("error text carries the key: %v", err)
	}
	if reqs := g.requests(); len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer Wr0ng-K3y" {
		t.Errorf("requests: got %d", len(reqs))
	}
}

func TestHTTPInvalidInputSendsNothing(t *testing.T) {
	srv, reqs, _ := cannedGateway(t, http.StatusAccepted, `{"id":"1-0"}`)
	p := newHTTP(t, srv.URL, "k")
	var fe *herald.FieldError
	if _, err := p.Publish(ctxT(t), "bogus", "x", nil); !errors.As(err, &fe) || fe.Field != "channel" {
		t.Errorf("got %v, want a FieldError on channel", err)
	}
	if len(reqs) != 0 {
		t.Errorf("invalid publish sent %d request(s)", len(reqs))
	}
}

func TestHTTPContextCanceled(t *testing.T) {
	srv, _, _ := cannedGateway(t, http.StatusAccepted, `{"id":"1-0"}`)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := newHTTP(t, srv.URL, "k").Publish(ctx, "user:1", "x", nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
}

func TestNewHTTPPublisherRefuses(t *testing.T) {
	for _, tc := range []struct{ base, key string }{
		{"", "k"},
		{"herald.example.com", "k"},
		{"ftp://herald.example.com", "k"},
		{"https://user:pw@herald.example.com", "k"},
		{"https://herald.example.com?x=1", "k"},
		{"https://herald.example.com", ""},
	} {
		p, err := herald.NewHTTPPublisher(tc.base, tc.key, herald.HTTPConfig{})
		if err == nil {
			t.Errorf("NewHTTPPublisher(%q, %q): got %v, want an error", tc.base, tc.key, p)
			continue
		}
		if strings.Contains(err.Error(), "pw") {
			t.Errorf("error shows the URL's password: %v", err)
		}
	}
}
