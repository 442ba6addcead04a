package ratelimit_test

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/ratelimit"
)

// Limit a route to 30 requests per client IP per 10 s, shared by every
// replica through Redis, and an API to 100 requests a minute per API key,
// which never reaches Redis in clear.
func ExampleMiddleware() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	e := echo.New()
	e.IPExtractor = echo.ExtractIPDirect() // or trust exactly your proxies

	perIP, err := ratelimit.NewSlidingWindow(rdb, ratelimit.SlidingWindowConfig{Limit: 30, Window: 10 * time.Second})
	if err != nil {
		panic(err)
	}
	e.GET("/login", func(c echo.Context) error { return c.NoContent(http.StatusNoContent) },
		ratelimit.Middleware(perIP, ratelimit.ClientIP, ratelimit.WithLogger(slog.Default())))

	perKey, err := ratelimit.NewSlidingWindow(rdb, ratelimit.SlidingWindowConfig{
		Limit: 100, Window: time.Minute, Prefix: "ratelimit:api:"})
	if err != nil {
		panic(err)
	}
	apiKey := func(c echo.Context) string { return c.Request().Header.Get("Authorization") }
	api := e.Group("/api", ratelimit.Middleware(perKey, ratelimit.Hashed(apiKey), ratelimit.FailOpen()))
	api.POST("/publish", func(c echo.Context) error { return c.NoContent(http.StatusAccepted) })
}

// A WebSocket endpoint limits concurrent sockets per user across replicas
// and answers a refusal before the upgrade with the same headers as the
// middleware.
func ExampleConcurrency() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	conns, err := ratelimit.NewConcurrency(rdb, ratelimit.ConcurrencyConfig{Replica: "gw-1"}, slog.Default())
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go conns.Run(ctx) // renew this replica's leases; an owner stops and waits for it

	handler := func(w http.ResponseWriter, r *http.Request, user string) {
		lease, res, err := conns.Acquire(r.Context(), user, 20)
		if err != nil {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		if !res.Allowed {
			ratelimit.SetHeaders(w.Header(), res)
			http.Error(w, "too many connections", http.StatusTooManyRequests)
			return
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			conns.Release(ctx, lease)
		}()
		// … upgrade and serve the socket …
	}
	_ = handler
}
