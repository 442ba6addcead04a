package gateway

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/session"
)

// apiError is a protocol outcome with a stable code. It is the one place
// where outcomes meet HTTP statuses: clients get Code and Message, logs get
// the cause.
type apiError struct {
	Status     int
	Code       string
	Message    string
	Field      string
	RetryAfter int // seconds; 0: no Retry-After header
	cause      error
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }
func (e *apiError) Unwrap() error { return e.cause }

var (
	errUnauthorized    = &apiError{Status: http.StatusUnauthorized, Code: "unauthorized", Message: "missing or invalid credentials"}
	errForbiddenOrigin = &apiError{Status: http.StatusForbidden, Code: "forbidden", Message: "origin not allowed"}
	errDraining        = &apiError{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "gateway restarting", RetryAfter: 2}
	errFull            = &apiError{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "gateway at capacity", RetryAfter: 5}
	errTooLarge        = &apiError{Status: http.StatusRequestEntityTooLarge, Code: "too_large", Message: "request body too large"}
	errUserAtCap       = &apiError{Status: http.StatusTooManyRequests, Code: "rate_limited", Message: "too many open connections for this user"}
	errNotFound        = &apiError{Status: http.StatusNotFound, Code: "not_found", Message: "not found"}

	errMethodNotAllowed = &apiError{Status: http.StatusMethodNotAllowed, Code: "method_not_allowed", Message: "method not allowed"}
	errNotJSON          = &apiError{Status: http.StatusUnsupportedMediaType, Code: "unsupported_media_type",
		Message: "Content-Type must be application/json", Field: "Content-Type"}
)

func errUnavailable(cause error) *apiError {
	return &apiError{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "backend unavailable", RetryAfter: 1, cause: cause}
}

func errBadRequest(field, msg string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: "bad_request", Message: msg, Field: field}
}

// toAPIError maps any error a handler meets to its outcome.
func toAPIError(err error) *apiError {
	var ae *apiError
	var fe *events.FieldError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &fe):
		return errBadRequest(fe.Field, fe.Error())
	case errors.As(err, &mbe):
		return errTooLarge
	case errors.Is(err, events.ErrIdempotencyConflict):
		return &apiError{Status: http.StatusUnprocessableEntity, Code: "idempotency_conflict", Field: "Idempotency-Key",
			Message: "this Idempotency-Key was already used for a publish to other channels or of other events"}
	case errors.Is(err, session.ErrNotFound), errors.Is(err, session.ErrExpired):
		return errUnauthorized
	}
	return errUnavailable(err)
}

// writeError answers with the JSON error body
// {"error":{"code":…,"message":…,"field":…}}.
func writeError(c echo.Context, e *apiError) error {
	if e.RetryAfter > 0 {
		c.Response().Header().Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	body := map[string]string{"code": e.Code, "message": e.Message}
	if e.Field != "" {
		body["field"] = e.Field
	}
	return c.JSON(e.Status, map[string]any{"error": body})
}

// errorHandler is echo's error handler: every error becomes the JSON body,
// and server-side causes are logged (never request secrets).
func (s *Server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		msg := http.StatusText(he.Code)
		if m, ok := he.Message.(string); ok {
			msg = m
		}
		code := "bad_request"
		switch he.Code {
		case http.StatusNotFound:
			code = "not_found"
		case http.StatusMethodNotAllowed:
			code = "method_not_allowed"
		case http.StatusRequestEntityTooLarge:
			code = "too_large"
		}
		writeError(c, &apiError{Status: he.Code, Code: code, Message: msg})
		return
	}
	ae := toAPIError(err)
	switch {
	case ae.Status >= 500:
		s.log.Error("request failed", "method", c.Request().Method, "path", c.Path(), "status", ae.Status, "err", err)
	case errors.Is(err, session.ErrUnusable): // the app wrote it: say why
		s.log.Warn("request refused: the session in Redis is unusable", "path", c.Path(), "status", ae.Status, "err", err)
	}
	writeError(c, ae)
}
