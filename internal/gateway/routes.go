package gateway

import (
	"net/http"

	"github.com/heraldgw/herald/ratelimit"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// routes wires every route of the gateway in one place.
func (s *Server) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.errorHandler
	e.IPExtractor = ipExtractor(s.cfg.TrustedProxies)
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{
		DisableStackAll: true,
		LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
			s.log.Error("handler panic", "path", c.Path(), "err", err, "stack", string(stack))
			return err
		},
	}))

	limit := func(l ratelimit.Limiter, key func(echo.Context) string) echo.MiddlewareFunc {
		return ratelimit.Middleware(l, key, ratelimit.WithLogger(s.log))
	}
	// Both transports share the connect limit of a client IP.
	connectLimit := s.countRefusals(limit(s.connects, connectKey))
	e.GET("/ws", s.handleWS, s.refuseEarly, s.lookAhead, connectLimit)
	e.GET("/sse", s.handleSSE, s.refuseEarly, s.lookAhead, connectLimit)
	e.OPTIONS("/sse", s.handleSSEPreflight)

	// API paths answer in JSON whatever goes wrong: an unknown path is 404,
	// a known one with another method 405 with Allow.
	api := e.Group("/api")
	// Publishes are limited per event, in publish, once the body is read.
	apiRoute(api, http.MethodPost, "/publish", s.handlePublish, s.requireAPIKey)
	apiRoute(api, http.MethodPost, "/publish/batch", s.handlePublishBatch, s.requireAPIKey)
	apiRoute(api, http.MethodPost, "/sessions", s.handleCreateSession, s.requireAPIKey)
	apiRoute(api, http.MethodDelete, "/sessions/:id", s.handleRevokeSession, s.requireAPIKey)
	apiRoute(api, http.MethodPost, "/tickets", s.handleTicket)
	api.Any("/*", func(c echo.Context) error { return writeError(c, errNotFound) })

	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	e.GET("/readyz", s.handleReady)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{})))

	if s.cfg.Dev {
		dev := e.Group("/dev")
		dev.POST("/login", s.handleDevLogin, s.sameSite)
		dev.POST("/logout", s.handleDevLogout, s.sameSite)
		dev.GET("/session", s.handleDevSession)
		dev.POST("/jobs", s.handleDevJob, s.sameSite)
		dev.GET("/results/:file", s.handleDevResult)
	}
	if s.web != nil {
		e.GET("/*", echo.WrapHandler(staticHandler(s.web)))
	}
	return e
}

// apiRoute adds h for method at path, and a JSON 405 naming method in
// Allow for every other method there (without it, the API's JSON 404
// catch-all would answer them).
func apiRoute(g *echo.Group, method, path string, h echo.HandlerFunc, mw ...echo.MiddlewareFunc) {
	g.Add(method, path, h, mw...)
	var others []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
		http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		if m != method {
			others = append(others, m)
		}
	}
	g.Match(others, path, func(c echo.Context) error {
		c.Response().Header().Set("Allow", method)
		return writeError(c, errMethodNotAllowed)
	})
}

// countRefusals counts, as connect refusals, the requests that mw answers
// itself without calling the handler (a limiter's 429 or 503).
func (s *Server) countRefusals(mw echo.MiddlewareFunc) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			reached := false
			err := mw(func(c echo.Context) error { reached = true; return next(c) })(c)
			if !reached {
				reason := "rate_limited"
				if c.Response().Status != http.StatusTooManyRequests {
					reason = "unavailable"
				}
				s.metrics.Refusals.WithLabelValues(reason).Inc()
			}
			return err
		}
	}
}

// connectKey is the connect limit's key: "ws:" and the client IP, in the
// classic ratelimit:{identifier} sorted set, for WebSockets and SSE streams
// alike.
func connectKey(c echo.Context) string { return "ws:" + ratelimit.ClientIP(c) }

// apiKey is the bearer token of an API request (already checked).
func apiKey(c echo.Context) string {
	k, _ := bearer(c.Request())
	return k
}

// handleReady is GET /readyz: 200, or 503 saying why not (readiness.go).
func (s *Server) handleReady(c echo.Context) error {
	if why := s.unready(); why != "" {
		return writeError(c, &apiError{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "not ready: " + why, RetryAfter: 1})
	}
	return c.String(http.StatusOK, "ready\n")
}
