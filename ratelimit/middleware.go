package ratelimit

import (
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
)

// An Option configures Middleware.
type Option func(*middleware)

// WithLogger logs limiter failures to log (default: discard). Log lines
// carry the method, the route and the error, never the key. Repeated
// failures are logged at most once a second, with a count of those left out.
func WithLogger(log *slog.Logger) Option {
	return func(m *middleware) {
		if log != nil {
			m.log = log
		}
	}
}

// FailOpen lets requests through, without X-RateLimit-* headers, when the
// limiter fails. The default is to fail closed: 503, Retry-After: 1, and
// the JSON error code "unavailable", as the gateway answers whenever Redis
// is out of reach. Fail open where an outage of the limiter must not become
// an outage of the route; fail closed where the limit protects something.
func FailOpen() Option { return func(m *middleware) { m.failOpen = true } }

// WithSkipper exempts the requests for which skip returns true.
func WithSkipper(skip func(echo.Context) bool) Option {
	return func(m *middleware) { m.skip = skip }
}

type middleware struct {
	limiter  Limiter
	key      func(echo.Context) string
	log      *slog.Logger
	failOpen bool
	skip     func(echo.Context) bool

	nextLog    atomic.Int64 // unix ns before which failures are not logged
	suppressed atomic.Int64 // failures not logged since the last line
}

// Middleware limits the requests of each key (for example [ClientIP], or
// [Hashed] of an API key) with l. An admitted request gets the
// X-RateLimit-* headers of [SetHeaders] and goes on; a refused one is
// answered 429 with those headers, Retry-After, and the JSON body
// {"error":{"code":"rate_limited","message":"…"}}, and never reaches the
// handler. An empty key is limited like any other (all requests without
// one share it); use WithSkipper to exempt requests instead. When l fails,
// see FailOpen.
func Middleware(l Limiter, key func(echo.Context) string, opts ...Option) echo.MiddlewareFunc {
	m := &middleware{limiter: l, key: key, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(m)
	}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if m.skip != nil && m.skip(c) {
				return next(c)
			}
			r, err := m.limiter.Allow(c.Request().Context(), m.key(c))
			if err != nil {
				m.logFailure(c, err)
				if m.failOpen {
					return next(c)
				}
				c.Response().Header().Set("Retry-After", "1")
				return writeError(c, http.StatusServiceUnavailable, "unavailable", "rate limiter unavailable")
			}
			SetHeaders(c.Response().Header(), r)
			if !r.Allowed {
				return writeError(c, http.StatusTooManyRequests, "rate_limited",
					fmt.Sprintf("rate limit exceeded, retry in %d s", retryAfterSeconds(r)))
			}
			return next(c)
		}
	}
}

func writeError(c echo.Context, status int, code, msg string) error {
	return c.JSON(status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func (m *middleware) logFailure(c echo.Context, err error) {
	if c.Request().Context().Err() != nil {
		return // the client left: not the limiter's failure
	}
	now := time.Now().UnixNano()
	next := m.nextLog.Load()
	if now < next || !m.nextLog.CompareAndSwap(next, now+int64(time.Second)) {
		m.suppressed.Add(1)
		return
	}
	level := slog.LevelError
	if m.failOpen {
		level = slog.LevelWarn
	}
	m.log.Log(c.Request().Context(), level, "rate limiter failed",
		"method", c.Request().Method, "route", c.Path(), "fail_open", m.failOpen,
		"suppressed", m.suppressed.Swap(0), "err", err)
}

// SetHeaders writes r as X-RateLimit-Limit, X-RateLimit-Remaining and
// X-RateLimit-Reset (seconds until Reset, rounded up), and, when r refused
// the request, Retry-After (seconds, rounded up, at least 1). Handlers that
// answer by themselves, such as a WebSocket endpoint refusing before the
// upgrade, use it to answer exactly as Middleware does.
func SetHeaders(h http.Header, r Result) {
	h.Set("X-RateLimit-Limit", strconv.Itoa(r.Limit))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(max(r.Remaining, 0)))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(ceilSeconds(r.Reset), 10))
	if !r.Allowed {
		h.Set("Retry-After", strconv.FormatInt(retryAfterSeconds(r), 10))
	}
}

// retryAfterSeconds is r.RetryAfter in whole seconds, rounded up, ≥ 1.
func retryAfterSeconds(r Result) int64 { return max(ceilSeconds(r.RetryAfter), 1) }

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}
