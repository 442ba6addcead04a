package herald

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/heraldgw/herald/internal/events"
)

// HTTPConfig holds the tunables of an [HTTPPublisher].
type HTTPConfig struct {
	// Client sends the requests. Default: a new client with a 10 second
	// timeout per request. A deadline on the call's context applies too.
	Client *http.Client
}

// HTTPPublisher publishes events through a gateway's publish API:
// POST {base}/api/publish and POST {base}/api/publish/batch, authenticated
// with an API key (one of the gateway's HERALD_API_KEYS). The gateway
// publishes them exactly as a [RedisPublisher] would.
//
// Input is validated before anything is sent, with the rules the gateway
// applies, and returns a *[FieldError]; any other answer than 2xx returns
// an *[APIError]. An error of the transport (the request may or may not have
// reached the gateway) is returned wrapped; give calls that will be retried
// an [IdempotencyKey], which is sent as the Idempotency-Key header.
//
// An HTTPPublisher is safe for concurrent use.
type HTTPPublisher struct {
	base   string // scheme://host[/path], no trailing slash
	apiKey string
	client *http.Client
}

// NewHTTPPublisher returns a publisher for the gateway at baseURL (for
// example "https://herald.example.com", or with a path prefix when the
// gateway is mounted under one) that authenticates with apiKey. It fails
// when baseURL is not an absolute http or https URL or apiKey is empty.
func NewHTTPPublisher(baseURL, apiKey string, cfg HTTPConfig) (*HTTPPublisher, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("herald: gateway URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("herald: gateway URL %q: want http(s)://host[/path]", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("herald: gateway URL %q: must not carry credentials, a query or a fragment", u.Redacted())
	}
	if apiKey == "" {
		return nil, errors.New("herald: empty API key")
	}
	client := cfg.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	return &HTTPPublisher{base: strings.TrimRight(u.String(), "/"), apiKey: apiKey, client: client}, nil
}

// APIError is a gateway's refusal of a publish: any answer other than 2xx.
type APIError struct {
	// Status is the HTTP status code: 400 bad input, 401 wrong API key,
	// 413 body too large, 429 rate limited, 503 gateway draining or its
	// Redis unreachable.
	Status int
	// Code is the gateway's stable error code ("bad_request",
	// "unauthorized", …), empty when the answer did not carry Herald's JSON
	// error body (a proxy's error page, say).
	Code string
	// Message describes the error for humans. Without a JSON error body it
	// is the start of the body, or the status text.
	Message string
	// Field names the offending field of the request, when the gateway
	// named one.
	Field string
}

// Is reports whether the API refused an idempotency key reused for other
// channels or events, so that errors.Is(err, ErrIdempotencyConflict) works
// for both publishers.
func (e *APIError) Is(target error) bool {
	return target == ErrIdempotencyConflict && e.Code == "idempotency_conflict"
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "herald: gateway answered %d", e.Status)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Field != "" {
		b.WriteString(" (" + e.Field + ")")
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	return b.String()
}

// Publish publishes one event on channel with POST {base}/api/publish and
// returns its event id.
func (p *HTTPPublisher) Publish(ctx context.Context, channel, event string, data any, opts ...PublishOption) (string, error) {
	o := ApplyPublishOptions(opts...)
	pubs, err := encode([]Message{{Channel: channel, Event: event, Data: data}}, true, o)
	if err != nil {
		return "", err
	}
	var res struct {
		ID string `json:"id"`
	}
	if err := p.post(ctx, "/api/publish", o.IdempotencyKey, pubs[0], &res); err != nil {
		return "", err
	}
	if res.ID == "" {
		return "", errors.New("herald: publish: gateway answered without an id")
	}
	return res.ID, nil
}

// PublishBatch publishes msgs atomically with POST {base}/api/publish/batch
// and returns their event ids in order.
func (p *HTTPPublisher) PublishBatch(ctx context.Context, msgs []Message, opts ...PublishOption) ([]string, error) {
	o := ApplyPublishOptions(opts...)
	pubs, err := encode(msgs, false, o)
	if err != nil {
		return nil, err
	}
	req := struct {
		Items []events.Publication `json:"items"`
	}{pubs}
	var res struct {
		IDs []string `json:"ids"`
	}
	if err := p.post(ctx, "/api/publish/batch", o.IdempotencyKey, req, &res); err != nil {
		return nil, err
	}
	if len(res.IDs) != len(msgs) {
		return nil, fmt.Errorf("herald: publish batch: gateway answered %d ids for %d messages", len(res.IDs), len(msgs))
	}
	return res.IDs, nil
}

// Largest answers read: an id list of a big batch fits easily.
const (
	maxAnswer    = 1 << 20
	maxErrorText = 200 // bytes of a non-JSON error body kept in APIError.Message
)

// post sends body as JSON to path and decodes a 2xx answer into res.
func (p *HTTPPublisher) post(ctx context.Context, path, idemKey string, body, res any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(body); err != nil {
		return fmt.Errorf("herald: encode request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.base+path, &buf)
	if err != nil {
		return fmt.Errorf("herald: %s: %w", path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+p.apiKey)
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("herald: %w", err) // *url.Error names method and URL, never the key
	}
	defer func() {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer)) // lets the connection be reused
		resp.Body.Close()
	}()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("herald: %s: read answer: %w", path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return apiError(resp.StatusCode, raw)
	}
	if err := json.Unmarshal(raw, res); err != nil {
		return fmt.Errorf("herald: %s: decode answer (status %d): %w", path, resp.StatusCode, err)
	}
	return nil
}

// apiError builds the APIError of a non-2xx answer from its body, which is
// {"error":{"code","message","field"}} when it comes from a gateway.
func apiError(status int, body []byte) *APIError {
	var eb struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Field   string `json:"field"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &eb) == nil && eb.Error != nil && eb.Error.Code != "" {
		return &APIError{Status: status, Code: eb.Error.Code, Message: eb.Error.Message, Field: eb.Error.Field}
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > maxErrorText {
		msg = strings.ToValidUTF8(msg[:maxErrorText], "") + "…"
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &APIError{Status: status, Message: msg}
}
