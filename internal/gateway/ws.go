package gateway

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/hub"
	"github.com/heraldgw/herald/internal/session"
	"github.com/heraldgw/herald/ratelimit"
)

const (
	readLimit        = 4 << 10 // bytes per client frame (PROTOCOL §4)
	subscribeTimeout = 5 * time.Second
)

// handleWS decides everything before the upgrade (PROTOCOL §3): a refused
// client gets a plain HTTP answer and never a socket.
//
// The checks run in this order: draining, origin, readiness and capacity
// (refuseEarly, no I/O); connects per client IP (the limiter middleware);
// credentials; sockets per user across replicas.
func (s *Server) handleWS(c echo.Context) error {
	r := c.Request()
	since := r.URL.Query().Get("since")
	if _, _, err := events.ParseID(since); since != "" && err != nil {
		return s.refuse(c, errBadRequest("since", "since is not an event id"))
	}
	sess, err := s.authenticate(r)
	if err != nil {
		return s.refuse(c, err)
	}
	lease, res, err := s.slots.Acquire(r.Context(), sess.UserID, s.cfg.MaxConnsPerUser)
	switch {
	case err != nil:
		return s.refuse(c, errUnavailable(err))
	case !res.Allowed:
		ratelimit.SetHeaders(c.Response().Header(), res)
		return s.refuse(c, errUserAtCap)
	}
	release := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := s.slots.Release(ctx, lease); err != nil {
			s.log.Warn("socket slot not released; its lease will expire", "err", err)
		}
	}

	userChannel := events.UserChannel(sess.UserID)
	ctx, cancel := context.WithTimeout(r.Context(), subscribeTimeout)
	err = s.broker.Subscribe(ctx, userChannel)
	cancel()
	if err != nil {
		release()
		return s.refuse(c, errUnavailable(err))
	}

	// Counted before the hijack, so that a Drain waiting for handlers
	// cannot miss this one.
	s.wg.Add(1)
	// Origin was checked in refuseEarly; the library's own check would differ.
	// The library reads the client through a meter (meter.go).
	mw := &meteredWriter{ResponseWriter: c.Response(), budget: &s.budget}
	ws, err := websocket.Accept(mw, r, &websocket.AcceptOptions{
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		s.wg.Done()
		release()
		s.broker.Unsubscribe(userChannel)
		s.log.Debug("upgrade failed", "err", err)
		return nil // Accept answered the client itself
	}
	ws.SetReadLimit(readLimit + 1) // our own check answers 1008 first
	// The socket's life goes on in a goroutine of its own, and the request
	// goroutine returns: its stack, grown deep through net/http and echo,
	// would otherwise stay with every idle socket.
	go func() {
		defer s.wg.Done()
		defer release()
		s.serveSocket(ws, sess, userChannel, since)
	}()
	return nil
}

// refuseEarly answers the connects that need no I/O to refuse: while
// draining or not ready (503), from a foreign origin (403), or beyond this
// replica's socket capacity (503, before file descriptors run out).
func (s *Server) refuseEarly(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		var err error
		switch {
		case s.hub.Draining():
			err = errDraining
		case !s.originAllowed(c.Request()):
			err = errForbiddenOrigin
		case !s.Ready():
			err = errUnavailable(errors.New("not ready"))
		case s.hub.Conns() >= s.cfg.MaxConns:
			err = errFull
		default:
			return next(c)
		}
		return s.refuse(c, err)
	}
}

// refuse answers a connect with its outcome before any upgrade, counts it
// and logs it (server-side causes at Warn, client mistakes at Debug).
func (s *Server) refuse(c echo.Context, err error) error {
	ae := toAPIError(err)
	s.metrics.Refusals.WithLabelValues(ae.Code).Inc()
	switch {
	case ae.Status >= 500:
		s.log.Warn("connect refused", "status", ae.Status, "ip", c.RealIP(), "err", err)
	case errors.Is(err, session.ErrUnusable): // the app wrote it: say why
		s.log.Warn("connect refused: the session in Redis is unusable", "status", ae.Status, "err", err)
	default:
		s.log.Debug("connect refused", "status", ae.Status, "ip", c.RealIP(), "reason", ae.Message)
	}
	return writeError(c, ae)
}

// authenticate finds the first credential present (ticket, cookie, bearer)
// and checks it; that one decides.
func (s *Server) authenticate(r *http.Request) (session.Session, error) {
	ctx := r.Context()
	if t := r.URL.Query().Get("ticket"); t != "" {
		return s.sessions.RedeemTicket(ctx, t)
	}
	if ck, err := r.Cookie(s.cfg.SessionCookie); err == nil && ck.Value != "" {
		return s.sessions.Get(ctx, ck.Value)
	}
	if id, ok := bearer(r); ok {
		return s.sessions.Get(ctx, id)
	}
	return session.Session{}, errUnauthorized
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		return strings.TrimSpace(h[7:]), true
	}
	return "", false
}

// originAllowed applies the allow-list (package origin) to browsers
// (requests with Origin). "null" (sandboxed frames, file: pages) is foreign.
// Without a list only the gateway's own host is allowed.
func (s *Server) originAllowed(r *http.Request) bool {
	return s.cfg.AllowedOrigins.Allows(r.Header.Get("Origin"), r.Host)
}

// wsTransport adapts a coder/websocket connection to the hub.
type wsTransport struct{ c *websocket.Conn }

func (t wsTransport) Write(ctx context.Context, b []byte) error {
	return t.c.Write(ctx, websocket.MessageText, b)
}
func (t wsTransport) Ping(ctx context.Context) error { return t.c.Ping(ctx) }
func (t wsTransport) Close(code int, reason string) error {
	return t.c.Close(websocket.StatusCode(code), reason)
}
func (t wsTransport) CloseNow() error { return t.c.CloseNow() }

// serveSocket registers an accepted socket, greets it and runs its read
// loop until the socket ends; then it releases everything it held.
func (s *Server) serveSocket(ws *websocket.Conn, sess session.Session, userChannel, since string) {
	hash := s.live.add(sess)
	defer s.live.release(hash)

	conn, err := s.hub.Add(uuid.NewString(), sess.UserID, hash, wsTransport{ws})
	if err != nil { // draining began after refuseEarly
		s.broker.Unsubscribe(userChannel)
		ws.Close(websocket.StatusServiceRestart, "server restart")
		return
	}
	s.metrics.Connects.Inc()
	defer func() {
		s.broker.Unsubscribe(s.hub.Remove(conn)...)
		ws.CloseNow()
	}()
	welcome := func(recovered string) []byte {
		last := ""
		if recovered == "" { // a resume's missed events carry their own ids
			last = s.broker.Last(userChannel)
		}
		return welcomeFrame(conn.ID, sess.UserID, s.cfg.Node, s.heartbeatSeconds(), recovered, last)
	}
	// The welcome goes first: before the personal channel's first event,
	// and, on a resume, before its missed events (Resume queues it).
	subscribe := s.hub.SubscribeResume
	if since == "" {
		conn.Send(welcome(""))
		subscribe = s.hub.Subscribe
	}
	if _, err := subscribe(conn, userChannel); err != nil {
		s.broker.Unsubscribe(userChannel) // the reference taken before the upgrade
	} else if since != "" {
		s.resume(s.ctx, conn, userChannel, since, func(recovered bool) []byte {
			return welcome(strconv.FormatBool(recovered))
		})
	}
	cl := &client{s: s, conn: conn, user: sess.UserID}
	cl.readLoop(s.ctx, ws)
}

// resume finishes a subscription begun with hub.SubscribeResume: it reads
// the channel's history after since and has the connection send first
// (built knowing whether the history covered the gap), then the missed
// events, then the live ones held back meanwhile, each exactly once. A
// failed history read still ends the hold, with recovered false.
func (s *Server) resume(ctx context.Context, conn *hub.Conn, channel, since string, first func(recovered bool) []byte) {
	hctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
	evs, complete, err := s.broker.History(hctx, channel, since)
	cancel()
	if err != nil {
		s.log.Warn("history read failed; resuming without it", "kind", events.Prefix(channel), "err", err)
	}
	last := since
	missed := make([]hub.Frame, len(evs))
	for i, ev := range evs {
		missed[i] = hub.Frame{ID: ev.ID, Frame: ev.Frame}
		last = ev.ID
	}
	conn.Resume(channel, first(err == nil && complete), missed, func(id string) bool {
		return events.CompareIDs(id, last) <= 0
	})
}

func (s *Server) heartbeatSeconds() int { return int(s.hub.PingInterval() / time.Second) }

var _ hub.Transport = wsTransport{}
