// Package gateway is Herald's HTTP and WebSocket front: it authenticates
// connects, upgrades them, runs each socket's read loop, serves the publish,
// session and ticket APIs, and keeps sessions of open sockets honest
// (revocations, deletions, expiry).
package gateway

import (
	"context"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/config"
	"github.com/heraldgw/herald/internal/hub"
	"github.com/heraldgw/herald/internal/metrics"
	"github.com/heraldgw/herald/internal/netpoll"
	"github.com/heraldgw/herald/internal/session"
	"github.com/heraldgw/herald/ratelimit"
)

// Deps are the server's dependencies, all required but Web.
type Deps struct {
	Config   config.Config
	Hub      *hub.Hub
	Broker   broker.Broker
	Sessions session.Store
	Metrics  *metrics.Metrics
	Guards   *metrics.Guards
	Gatherer prometheus.Gatherer // what /metrics serves
	Log      *slog.Logger
	Web      fs.FS // static files served at /; nil serves none

	// Limits (PROTOCOL §3, issue 3): connects per client IP, publishes per
	// API key, and sockets per user across replicas.
	ConnectLimiter ratelimit.Limiter
	PublishLimiter EventLimiter
	Slots          Slots
}

// EventLimiter spends n of a key's budget at once, all or nothing: a
// publish costs one per event (ratelimit.TokenBucket and its memory twin).
type EventLimiter interface {
	AllowN(ctx context.Context, key string, n int) (ratelimit.Result, error)
}

// Slots counts a user's open sockets across all replicas.
type Slots interface {
	Acquire(ctx context.Context, user string, limit int) (ratelimit.Lease, ratelimit.Result, error)
	Release(ctx context.Context, l ratelimit.Lease) error
}

// Server is the gateway's HTTP side. Create it with New, serve Handler, run
// its background loops with Run, and stop it with Drain.
type Server struct {
	cfg       config.Config
	hub       *hub.Hub
	broker    broker.Broker
	sessions  session.Store
	metrics   *metrics.Metrics
	guards    *metrics.Guards
	gatherer  prometheus.Gatherer
	log       *slog.Logger
	web       fs.FS
	now       func() time.Time
	connects  ratelimit.Limiter
	publishes EventLimiter
	slots     Slots
	httpConns *httpConns      // connections not upgraded to WebSocket
	budget    frameBudget     // what one socket may send (meter.go)
	poller    *netpoll.Poller // where idle sockets' readers park (park.go); nil: they block
	backend   backendHealth

	echo      *echo.Echo
	live      *liveSessions
	slotConns slotConns   // the connections of the slots held, by lease
	watching  atomic.Bool // the revocation watch is subscribed

	// ctx outlives requests: socket read loops and dev jobs run under it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // socket handlers and dev jobs
}

// New builds a Server and its routes.
func New(d Deps) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: d.Config, hub: d.Hub, broker: d.Broker, sessions: d.Sessions,
		metrics: d.Metrics, guards: d.Guards, gatherer: d.Gatherer, log: d.Log, web: d.Web, now: time.Now,
		connects: d.ConnectLimiter, publishes: d.PublishLimiter, slots: d.Slots,
		live: newLiveSessions(), ctx: ctx, cancel: cancel,
	}
	why := notAnswered
	s.backend.down.Store(&why)
	s.httpConns = newHTTPConns(d.Config.MaxHTTPConns, d.Guards.HTTPEvictions.Inc)
	s.budget = frameBudget{
		frameRate: d.Config.ClientFrameRate, frameBurst: float64(d.Config.ClientFrameBurst),
		byteRate: float64(d.Config.ClientByteRate), byteBurst: float64(d.Config.ClientByteBurst),
		epoch: time.Now(),
	}
	if p, err := netpoll.New(); err == nil {
		s.poller = p
	} else {
		d.Log.Info("idle sockets keep a reading goroutine each", "err", err)
	}
	s.echo = s.routes()
	return s
}

// Handler returns the HTTP handler of every route. Request bodies must
// arrive within HERALD_BODY_TIMEOUT.
func (s *Server) Handler() http.Handler { return bodyDeadline(s.echo, s.cfg.BodyTimeout) }

// ConnState is the http.Server's ConnState hook: it caps the connections
// not upgraded to WebSocket at HERALD_MAX_HTTP_CONNS, closing the stalest
// when a new one arrives at the cap.
func (s *Server) ConnState(c net.Conn, st http.ConnState) { s.httpConns.track(c, st) }

// ConnContext is the http.Server's ConnContext hook: it remembers each
// request's connection, so that an SSE stream can leave the cap of
// ConnState.
func (s *Server) ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

type connKey struct{}

// HTTPConns returns how many connections not upgraded to WebSocket are open.
func (s *Server) HTTPConns() int { return s.httpConns.len() }

// Ready reports whether the server accepts sockets and publishes: the
// backend answers, revocations are watched, and no drain began.
func (s *Server) Ready() bool { return s.unready() == "" }

// Run runs the background loops (heartbeats, readiness probe, session
// checks, revocation watch) until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { s.hub.Run(ctx); return nil })
	g.Go(func() error { s.probeLoop(ctx); return nil })
	g.Go(func() error { s.sessionCheckLoop(ctx); return nil })
	g.Go(func() error { return s.watchRevocations(ctx) })
	if r, ok := s.slots.(interface{ Run(context.Context) }); ok {
		g.Go(func() error { r.Run(ctx); return nil }) // lease heartbeats
	}
	return g.Wait()
}

// Evicted tells a client the hub removed from channel because the
// channel's events belong to another user (hub.Config.OnEvict).
func (s *Server) Evicted(c *hub.Conn, channel string) {
	s.metrics.Evictions.Inc()
	c.Send(evictedFrame(channel))
}

// Gap tells every local subscriber of channel that events were lost on
// their way to this replica (broker.RedisOptions.OnGap).
func (s *Server) Gap(channel string) {
	s.metrics.Gaps.Inc()
	s.hub.Notify(channel, gapFrame(channel))
}

// Drain closes every connection (sockets and SSE streams) with 1012 spread
// over the drain window, waits for their handlers (until ctx is done) and
// stops dev jobs. Call it once the listener stops accepting, or as it
// does: new connects are refused from its first instant.
func (s *Server) Drain(ctx context.Context) {
	s.hub.Drain(ctx, hub.CloseRestart, "server restart", s.cfg.DrainTimeout)
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("drain deadline passed with handlers still running")
	}
	if s.poller != nil {
		s.poller.Close()
	}
}

// watchRevocations closes the sockets of sessions revoked on any replica.
// Until its first subscription is in place the server is not ready, so no
// socket is admitted whose revocation could be missed.
func (s *Server) watchRevocations(ctx context.Context) error {
	for ctx.Err() == nil {
		err := s.sessions.Watch(ctx, func() { s.watching.Store(true) }, func(r session.Revocation) {
			match := func(c *hub.Conn) bool { return c.Tag == r.SessionHash }
			var n int
			if r.UserID == "" { // a session whose JSON was unreadable
				n = s.hub.CloseWhere(match, hub.CloseRevoked, "session revoked")
			} else {
				n = s.hub.CloseUser(r.UserID, match, hub.CloseRevoked, "session revoked")
			}
			if n > 0 {
				s.log.Info("session revoked: sockets closed", "user", r.UserID, "sockets", n)
			}
		})
		if err != nil && ctx.Err() == nil {
			s.log.Error("revocation watch failed; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}
