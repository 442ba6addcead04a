package gateway

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/session"
	"github.com/heraldgw/herald/ratelimit"
)

// Body limits of the HTTP APIs.
const (
	maxPublishBody = 64 << 10
	maxBatchBody   = 1 << 20
	maxBatchItems  = 100
	maxSmallBody   = 4 << 10
	maxSessionTTL  = 30 * 24 * time.Hour
	ownerTTL       = 24 * time.Hour
)

// requireAPIKey admits requests bearing one of the configured API keys,
// compared in constant time. With no keys configured it refuses everything.
func (s *Server) requireAPIKey(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		key, ok := bearer(c.Request())
		if !ok || !s.validKey(key) {
			return writeError(c, errUnauthorized)
		}
		return next(c)
	}
}

func (s *Server) validKey(key string) bool {
	found := 0
	for _, k := range s.cfg.APIKeys {
		found |= subtle.ConstantTimeCompare([]byte(k), []byte(key))
	}
	return found == 1
}

// decodeBody reads a JSON body (Content-Type application/json, else 415)
// of at most limit bytes into v.
func decodeBody(c echo.Context, limit int64, v any) error {
	if err := requireJSON(c.Request()); err != nil {
		return err
	}
	return decodeJSON(http.MaxBytesReader(c.Response(), c.Request().Body, limit), v)
}

// decodeJSON decodes exactly one JSON value from r into v. Unknown fields
// are refused so that typos surface, and so are fields given twice or in
// another case (strictFields) and anything after the value. Every error is
// an *apiError naming the field when it can.
func decodeJSON(r io.Reader, v any) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return bodyError(err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return errBadRequest("body", "empty body")
	}
	// One walk finds fields given twice or in another case, and the first
	// unknown one; json.Unmarshal, far cheaper than a Decoder, does the rest.
	s := jsonScan{b: data}
	verdict := s.check(reflect.TypeOf(v))
	if err := fieldVerdict(verdict); err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return bodyError(err)
	}
	switch {
	case verdict != nil: // the walk stopped early: let the Decoder look for unknown fields
		return decodeStrict(data, v)
	case s.unknown != nil:
		return errBadRequest(*s.unknown, "unknown field "+*s.unknown)
	}
	return nil
}

// decodeStrict decodes data into v with a Decoder that refuses unknown
// fields.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return bodyError(err)
	}
	return nil
}

// bodyError names the field a JSON decoding error is about, when it can.
func bodyError(err error) error {
	var mbe *http.MaxBytesError
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &mbe):
		return errTooLarge
	case errors.Is(err, os.ErrDeadlineExceeded): // HERALD_BODY_TIMEOUT
		return &apiError{Status: http.StatusRequestTimeout, Code: "timeout", Message: "request body too slow"}
	case errors.As(err, &te):
		return errBadRequest(te.Field, fmt.Sprintf("%s must be %s", te.Field, te.Type))
	case errors.As(err, &se) && strings.HasSuffix(se.Error(), "after top-level value"):
		return errBadRequest("body", "trailing data after the JSON value")
	case errors.Is(err, io.EOF):
		return errBadRequest("body", "empty body")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return errBadRequest(f, "unknown field "+f)
	}
	return errBadRequest("body", "invalid JSON")
}

// handlePublish is POST /api/publish (PROTOCOL §6).
func (s *Server) handlePublish(c echo.Context) error {
	var p events.Publication
	if err := decodeBody(c, maxPublishBody, &p); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	ids, err := s.publish(c, "http", p)
	if err != nil {
		return err
	}
	return c.JSONBlob(http.StatusAccepted, idBody(ids[0]))
}

// idBody is the answer to a single publish, {"id":…} and a newline, as
// c.JSON writes it, without a map to sort and encode on every publish.
func idBody(id string) []byte {
	q, _ := json.Marshal(id) // a string always encodes
	b := make([]byte, 0, len(q)+8)
	b = append(b, `{"id":`...)
	b = append(b, q...)
	return append(b, "}\n"...)
}

// publishBatch is the body of POST /api/publish/batch.
type publishBatch struct {
	Items []events.Publication `json:"items"`
}

// handlePublishBatch is POST /api/publish/batch: all items or none.
func (s *Server) handlePublishBatch(c echo.Context) error {
	var body publishBatch
	if err := decodeBody(c, maxBatchBody, &body); err != nil {
		return err
	}
	if len(body.Items) == 0 || len(body.Items) > maxBatchItems {
		return errBadRequest("items", fmt.Sprintf("items must hold 1 to %d publications", maxBatchItems))
	}
	for i, p := range body.Items {
		var fe *events.FieldError
		if err := p.Validate(); errors.As(err, &fe) {
			return errBadRequest(fmt.Sprintf("items[%d].%s", i, fe.Field), fe.Error())
		}
	}
	ids, err := s.publish(c, "http", body.Items...)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusAccepted, map[string][]string{"ids": ids})
}

// publish sends validated publications through the broker, honouring an
// Idempotency-Key header in the scope of the caller's API key, once the API
// key's budget paid for every one of them.
func (s *Server) publish(c echo.Context, source string, pubs ...events.Publication) ([]string, error) {
	if !s.Ready() {
		return nil, errUnavailable(errors.New("not ready"))
	}
	key := c.Request().Header.Get("Idempotency-Key")
	if err := events.CheckIdemKey(key); err != nil {
		return nil, errBadRequest("Idempotency-Key", "Idempotency-Key "+err.Error())
	}
	if err := s.chargeEvents(c, len(pubs)); err != nil {
		return nil, err
	}
	scoped := events.ScopedKey(events.APIKeyScope(apiKey(c)), key)
	ids, err := s.broker.Publish(c.Request().Context(), scoped, pubs...)
	if err != nil {
		return nil, err
	}
	s.metrics.EventsIn.WithLabelValues(source).Add(float64(len(pubs)))
	return ids, nil
}

// chargeEvents spends n events of the API key's publish budget
// (HERALD_PUBLISH_RATE/_BURST, the token bucket bucket:{sha256 of the key}
// shared by all replicas) and sets the X-RateLimit-* headers. Over the
// budget it is 429 with Retry-After, and nothing is spent; a call of more
// events than the burst could never pass, so it is 400.
func (s *Server) chargeEvents(c echo.Context, n int) error {
	if n > s.cfg.PublishBurst {
		return errBadRequest("items", fmt.Sprintf("at most %d events per call (the publish burst)", s.cfg.PublishBurst))
	}
	res, err := s.publishes.AllowN(c.Request().Context(), ratelimit.HashKey(apiKey(c)), n)
	if err != nil {
		return errUnavailable(fmt.Errorf("publish limit: %w", err))
	}
	msg := ""
	if !res.Allowed { // built on refusal only: this runs on every publish
		msg = fmt.Sprintf("publish rate of this API key exceeded: %d events asked, %d left", n, res.Remaining)
	}
	return limited(c, res, msg)
}

// limited sets the X-RateLimit-* headers of a limiter's decision and, when
// it refused, returns the 429 to answer with msg (Retry-After is among the
// headers).
func limited(c echo.Context, res ratelimit.Result, msg string) error {
	ratelimit.SetHeaders(c.Response().Header(), res)
	if res.Allowed {
		return nil
	}
	return &apiError{Status: http.StatusTooManyRequests, Code: "rate_limited", Message: msg}
}

// handleCreateSession is POST /api/sessions (PROTOCOL §7); ttl is in
// seconds.
func (s *Server) handleCreateSession(c echo.Context) error {
	var body struct {
		UserID string `json:"userId"`
		Email  string `json:"email"`
		Plan   string `json:"plan"`
		TTL    int64  `json:"ttl"`
	}
	if err := decodeBody(c, maxSmallBody, &body); err != nil {
		return err
	}
	if !events.ValidName(body.UserID) {
		return errBadRequest("userId", "userId must match [A-Za-z0-9:_.-]{1,128}")
	}
	ttl := time.Duration(body.TTL) * time.Second
	if ttl <= 0 || ttl > maxSessionTTL {
		return errBadRequest("ttl", "ttl must be 1 to 2592000 seconds")
	}
	sess, err := s.sessions.Create(c.Request().Context(), body.UserID, body.Email, body.Plan, ttl)
	if err != nil {
		return errUnavailable(err)
	}
	return c.JSON(http.StatusCreated, map[string]any{"sessionId": sess.ID, "expiresAt": sess.ExpiresAt})
}

// handleRevokeSession is DELETE /api/sessions/{id}: every socket of the
// session, on every replica, is closed with 4001.
func (s *Server) handleRevokeSession(c echo.Context) error {
	err := s.sessions.Revoke(c.Request().Context(), c.Param("id"))
	switch {
	case errors.Is(err, session.ErrNotFound):
		return writeError(c, errNotFound)
	case err != nil:
		return errUnavailable(err)
	}
	return c.NoContent(http.StatusNoContent)
}

// handleTicket is POST /api/tickets: a one-time connect ticket for the
// session in the cookie or bearer header. With the cookie, the browser's
// Origin must pass the allow-list, as for /ws. Tickets are limited per
// session like connects per client IP (HERALD_CONNECT_LIMIT per
// HERALD_CONNECT_WINDOW, on ratelimit:ticket:{session hash}).
func (s *Server) handleTicket(c echo.Context) error {
	r := c.Request()
	if err := requireJSON(r); err != nil { // it takes no body; a form is not JSON
		return err
	}
	var id string
	if ck, err := r.Cookie(s.cfg.SessionCookie); err == nil && ck.Value != "" {
		if !s.originAllowed(r) {
			return writeError(c, errForbiddenOrigin)
		}
		id = ck.Value
	} else if b, ok := bearer(r); ok {
		id = b
	} else {
		return writeError(c, errUnauthorized)
	}
	sess, err := s.sessions.Get(r.Context(), id)
	if err != nil {
		return err
	}
	// Limited once the session is known: unknown ids must not make keys.
	res, err := s.connects.Allow(r.Context(), "ticket:"+session.Hash(sess.ID))
	if err != nil {
		return errUnavailable(fmt.Errorf("ticket limit: %w", err))
	}
	if err := limited(c, res, "too many tickets for this session"); err != nil {
		return err
	}
	t, err := s.sessions.IssueTicket(r.Context(), sess)
	if err != nil {
		return errUnavailable(err)
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusCreated, map[string]any{"ticket": t, "expiresIn": int(session.TicketTTL / time.Second)})
}
