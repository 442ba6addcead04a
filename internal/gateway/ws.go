package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
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
// The checks answer in this order: draining, origin, readiness and
// capacity (refuseEarly, no I/O); connects per client IP (the limiter
// middleware); credentials (looked up meanwhile, lookAhead); sockets per
// user across replicas.
func (s *Server) handleWS(c echo.Context) error {
	r := c.Request()
	since := c.QueryParam("since") // echo parses the query once per request
	if since != "" {
		// Parsed only when given: ParseID("") builds an error for nothing.
		if _, _, err := events.ParseID(since); err != nil {
			return s.refuse(c, errBadRequest("since", "since is not an event id"))
		}
	}
	sess, sl, err := s.admit(c)
	if err != nil {
		return s.refuse(c, err)
	}

	// Counted before the hijack, so that a Drain waiting for handlers
	// cannot miss this one.
	s.wg.Add(1)
	// Origin was checked in refuseEarly; the library's own check would differ.
	// The library reads the client through a meter (meter.go).
	mw := &meteredWriter{ResponseWriter: c.Response(), budget: &s.budget, bufs: socketBuffers,
		poller: s.poller, writeTimeout: s.hub.WriteTimeout()}
	ws, err := websocket.Accept(mw, r, &websocket.AcceptOptions{
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		s.wg.Done()
		sl.release()
		s.log.Debug("upgrade failed", "err", err)
		return nil // Accept answered the client itself
	}
	ws.SetReadLimit(readLimit + 1) // our own check answers 1008 first
	// The request goroutine joins the socket's channel, sends the welcome
	// and parks the socket (or starts its reader), then returns: an idle
	// socket keeps no goroutine, and a new one here would only grow its
	// stack again through the join.
	s.serveSocket(ws, mw.meter, sess, since, sl.bind, func() {
		sl.release()
		s.wg.Done()
	})
	return nil
}

// socketBuffers are the I/O buffers a WebSocket keeps for its life, instead
// of net/http's 4 KiB each: an idle socket is mostly its buffers. Client
// frames are small (4 KiB at most); a server message larger than the write
// buffer goes to the socket in two writes instead of one.
var socketBuffers = hijackBuffers{read: 256, write: 512}

// admit checks the credentials of a connect (PROTOCOL §3) and takes one of
// the user's connection slots across replicas, for /ws and /sse alike. On
// success the caller binds the slot to its connection once it exists, and
// releases it once the connection is over; the error is the refusal to
// answer with.
func (s *Server) admit(c echo.Context) (session.Session, slot, error) {
	r := c.Request()
	sess, err := s.credentials(c)
	if err != nil {
		return session.Session{}, slot{}, err
	}
	lease, res, err := s.slots.Acquire(r.Context(), sess.UserID, s.cfg.MaxConnsPerUser)
	switch {
	case err != nil:
		return session.Session{}, slot{}, errUnavailable(err)
	case !res.Allowed:
		ratelimit.SetHeaders(c.Response().Header(), res)
		return session.Session{}, slot{}, errUserAtCap
	}
	s.slotConns.add(lease)
	return sess, slot{s: s, lease: lease}, nil
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

// lookAhead starts looking up a connect's session (cookie or bearer) while
// next checks the connect limit of its IP, so that the two round trips to
// Redis overlap instead of following each other; admit then takes the
// answer (credentials). The answers are those of the checks one after the
// other: a connect the limit refuses gets its 429 (or 503) whatever its
// session, and the lookup is cancelled and waited for. A ticket is not
// looked up ahead: redeeming it uses it up, and a connect the limit
// refuses keeps it.
func (s *Server) lookAhead(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if c.QueryParam("ticket") != "" {
			return next(c)
		}
		r := c.Request()
		ctx, cancel := context.WithCancel(r.Context())
		l := &lookup{done: make(chan struct{})}
		go func() {
			defer close(l.done)
			l.sess, l.err = s.authenticate(ctx, r, "")
		}()
		c.Set(lookupKey, l)
		err := next(c)
		cancel()
		<-l.done
		return err
	}
}

// lookupKey holds a connect's *lookup in its echo.Context.
const lookupKey = "herald.lookup"

// lookup is a session lookup under way (lookAhead); sess and err are set
// once done is closed.
type lookup struct {
	done chan struct{}
	sess session.Session
	err  error
}

// credentials returns the session of a connect: the one lookAhead looked
// up, or, without it, the one authenticate finds now.
func (s *Server) credentials(c echo.Context) (session.Session, error) {
	if l, ok := c.Get(lookupKey).(*lookup); ok {
		<-l.done
		return l.sess, l.err
	}
	return s.authenticate(c.Request().Context(), c.Request(), c.QueryParam("ticket"))
}

// authenticate finds the first credential present and checks it; that one
// decides: ticket (the request's ?ticket=, which the caller passes, or ""),
// then the session cookie, then a bearer token.
func (s *Server) authenticate(ctx context.Context, r *http.Request, ticket string) (session.Session, error) {
	if ticket != "" {
		return s.sessions.RedeemTicket(ctx, ticket)
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
// Without a list only the gateway's own host is allowed. A request without
// Origin is a program's, or a browser's own page's: a WebSocket always
// carries Origin, but a same-origin EventSource does not, and neither does
// a request another site's page makes without CORS (an <img> pointing at
// /sse), which its Sec-Fetch-Site header gives away.
func (s *Server) originAllowed(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		switch r.Header.Get("Sec-Fetch-Site") {
		case "cross-site", "same-site":
			return false
		}
	}
	return s.cfg.AllowedOrigins.Allows(o, r.Host)
}

// wsTransport adapts a coder/websocket connection to the hub. Its writes
// are bounded by the meter under the library (m), which gives every write
// to the socket the hub's WriteTimeout (meter.Write): the library is given
// a context that cannot be cancelled, so it sets up nothing per write.
type wsTransport struct {
	c *websocket.Conn
	m *meter
}

// Write sends frames as one text message, separated by "\n". The deadline
// is the hub's WriteTimeout from now, which the meter applies (within an
// eighth of it) to this write and to every other one: pings, pongs, the
// closing handshake.
func (t wsTransport) Write(_ time.Time, frames [][]byte) error {
	wctx := context.Background()
	if len(frames) == 1 {
		return t.c.Write(wctx, websocket.MessageText, frames[0])
	}
	// One payload, written as one WebSocket frame: through the library's
	// Writer every Write would be a frame of its own (the "\n" too), each
	// pushed through the 512-byte write buffer, so a 16 KiB message cost
	// about 30 write syscalls instead of two.
	buf := joinPool.Get().(*[]byte)
	defer joinPool.Put(buf)
	*buf = (*buf)[:0]
	for i, f := range frames {
		if i > 0 {
			*buf = append(*buf, '\n')
		}
		*buf = append(*buf, f...)
	}
	return t.c.Write(wctx, websocket.MessageText, *buf)
}

// joinPool holds the buffers in which Write joins a batch's frames: at most
// hub.MaxWriteBytes each, shared by all sockets instead of one per socket.
var joinPool = sync.Pool{New: func() any {
	b := make([]byte, 0, hub.MaxWriteBytes)
	return &b
}}

func (t wsTransport) Ping(ctx context.Context) error { return t.c.Ping(ctx) }
func (t wsTransport) Close(code int, reason string) error {
	if t.m != nil {
		t.m.closeHandshake()
	}
	return t.c.Close(websocket.StatusCode(code), reason)
}
func (t wsTransport) CloseNow() error { return t.c.CloseNow() }

// serveSocket registers an accepted socket and joins it to its personal
// channel (the welcome is the reply to that join, so it comes before any
// event of the channel), then hands the socket to its read loop and
// returns; it runs on the request's goroutine. bind is given the hub
// connection once it exists. The read loop, once the socket ends, releases
// everything it held; done runs last (also when the join fails).
//
// The read loop gets a goroutine of its own when the client sends: a new
// goroutine starts with a stack the size idle ones use, while the join's
// calls have grown the request's. While the client sends nothing the loop
// parks the socket and its goroutine ends; a new one carries on when the
// client sends (park.go). A socket whose client has sent nothing yet
// starts parked (parkFirst).
func (s *Server) serveSocket(ws *websocket.Conn, m *meter, sess session.Session, since string, bind func(*hub.Conn), done func()) {
	hash := s.live.add(sess, s.now(), s.cfg.SessionCheck)
	conn, err := s.openConn(sess, hash, wsTransport{c: ws, m: m}, since)
	if err != nil {
		code, reason := openCloseCode(err)
		ws.Close(websocket.StatusCode(code), reason)
		s.live.release(hash)
		done()
		return
	}
	bind(conn)
	cl := &client{s: s, conn: conn}
	read := func() {
		if cl.readLoop(s.ctx, ws, m) {
			return // parked
		}
		s.hub.Remove(conn)
		ws.CloseNow()
		s.live.release(hash)
		done()
	}
	m.resume = read
	if !m.parkFirst() {
		go read()
	}
}

func (s *Server) openConn(sess session.Session, hash string, t hub.Transport, since string) (*hub.Conn, error) {
	conn, err := s.hub.Add(uuid.NewString(), sess.UserID, hash, t)
	if err != nil {
		return nil, err
	}
	s.metrics.Connects.Inc()
	err = s.joinPersonal(conn, sess, since)
	if err != nil {
		s.hub.Remove(conn)
		if !errors.Is(err, errJoinPanicked) { // logged with its stack
			s.log.Warn("personal channel not joined; closing the connection", "err", err)
		}
		s.metrics.Closed(hub.CloseTryAgain)
		return nil, err
	}
	return conn, nil
}

// joinPersonal joins conn to its user's personal channel, with the
// welcome as the reply. A panic on the way (a bug) is logged and returned
// as an error, so that the connection is closed and gives back what it
// holds (its slot, its place in the hub, a drain's wait) like one whose
// join failed.
func (s *Server) joinPersonal(conn *hub.Conn, sess session.Session, since string) (err error) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic joining a connection's personal channel; closing the connection", "panic", v, "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", errJoinPanicked, v)
		}
	}()
	ctx, cancel := context.WithTimeout(s.ctx, subscribeTimeout)
	defer cancel()
	return s.hub.Join(ctx, conn, events.UserChannel(sess.UserID), since, func(j hub.Joined) []byte {
		recovered := ""
		if j.Resumed {
			recovered = strconv.FormatBool(j.Recovered)
		}
		return welcomeFrame(conn.ID, sess.UserID, s.cfg.Node, s.heartbeatSeconds(), recovered, j.Last)
	})
}

// errJoinPanicked is the error of a join that panicked (joinPersonal).
var errJoinPanicked = errors.New("join panicked")

// openCloseCode is the close code and reason for an openConn error.
func openCloseCode(err error) (int, string) {
	if errors.Is(err, hub.ErrDraining) {
		return hub.CloseRestart, "server restart"
	}
	return hub.CloseTryAgain, "backend unavailable, try again"
}

func (s *Server) heartbeatSeconds() int { return int(s.hub.PingInterval() / time.Second) }

var _ hub.Transport = wsTransport{}
