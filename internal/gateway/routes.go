package gateway

import (
	"net/http"

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

	e.GET("/ws", s.handleWS)

	api := e.Group("/api")
	api.POST("/publish", s.handlePublish, s.requireAPIKey)
	api.POST("/publish/batch", s.handlePublishBatch, s.requireAPIKey)
	api.POST("/sessions", s.handleCreateSession, s.requireAPIKey)
	api.DELETE("/sessions/:id", s.handleRevokeSession, s.requireAPIKey)
	api.POST("/tickets", s.handleTicket)

	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	e.GET("/readyz", s.handleReady)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{})))

	if s.cfg.Dev {
		dev := e.Group("/dev")
		dev.POST("/login", s.handleDevLogin)
		dev.POST("/logout", s.handleDevLogout)
		dev.POST("/jobs", s.handleDevJob)
		dev.GET("/results/:file", s.handleDevResult)
	}
	if s.web != nil {
		e.GET("/*", echo.WrapHandler(http.FileServerFS(s.web)))
	}
	return e
}

func (s *Server) handleReady(c echo.Context) error {
	if !s.Ready() {
		return writeError(c, errUnavailable(nil))
	}
	return c.String(http.StatusOK, "ready\n")
}
