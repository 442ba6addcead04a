package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/hub"
)

// Server-Sent Events (PROTOCOL §3a): the fallback for networks that block
// WebSockets. GET /sse is admitted like /ws, and its connection lives in
// the hub like a socket's: the same frames, queue, heartbeats and closes,
// written as SSE events. A stream cannot send frames, so its channels are
// given in its URL (channel=, repeated) and joined at connect, and a
// change of channels is a new stream.
//
// Resume must be exact for every channel when the browser's EventSource
// reconnects by itself, and it sends back only the original URL and the
// last `id:` it saw. So the `id:` of a frame is the whole stream's cursor
// after that frame: every channel's newest event id, by position in the
// URL. herald.js, which makes a new EventSource when its channels change,
// passes the same cursor as the lastEventId query parameter.

const (
	// maxStreamChannels bounds the channel= values of one stream; each
	// may cost an owner lookup. The hub's own limit (128 channels per
	// connection, the user's included) refuses the last of them anyway.
	maxStreamChannels = 128
	// streamCloseTimeout bounds the writing of a close frame, and of the
	// end of a response after one.
	streamCloseTimeout = 5 * time.Second
)

// handleSSE serves GET /sse. The checks are those of /ws, in the same
// order and with the same answers: refuseEarly and the connect limit run
// as middleware, then the stream's own parameters, credentials and the
// user's connection slots. The handler then stays for the stream's life.
func (s *Server) handleSSE(c echo.Context) error {
	r := c.Request()
	q := c.QueryParams()
	channels := q["channel"]
	if len(channels) > maxStreamChannels {
		return s.refuse(c, errBadRequest("channel", fmt.Sprintf("at most %d channels per stream", maxStreamChannels)))
	}
	// EventSource's own reconnect keeps the URL (with the cursor it was
	// opened with) and sends the newer one in the header: the header wins.
	field, raw := "Last-Event-ID", r.Header.Get("Last-Event-ID")
	if raw == "" {
		field, raw = "lastEventId", q.Get("lastEventId")
	}
	cur, err := parseCursor(raw, 1+len(channels))
	if err != nil {
		return s.refuse(c, errBadRequest(field, "not a resume cursor of this stream"))
	}
	sess, sl, err := s.admit(c)
	if err != nil {
		return s.refuse(c, err)
	}
	defer sl.release()
	s.wg.Add(1) // a drain waits for this handler
	defer s.wg.Done()

	since := make([]string, len(cur))
	for i := range cur {
		since[i] = cur[i].id()
	}
	// A stream is a long-lived connection of its own, like a WebSocket:
	// it leaves the cap on plain HTTP connections.
	if nc, ok := c.Request().Context().Value(connKey{}).(net.Conn); ok {
		s.httpConns.release(nc)
	}
	st, err := startStream(c, streamCursor{
		channels: append([]string{events.UserChannel(sess.UserID)}, channels...),
		slots:    cur,
	})
	if err != nil {
		s.log.Debug("stream not started", "err", err)
		return nil
	}
	hash := s.live.add(sess, s.now(), s.cfg.SessionCheck)
	defer s.live.release(hash)
	conn, err := s.openConn(sess, hash, st, since[0])
	if err != nil {
		st.Close(openCloseCode(err))
		st.finish()
		return nil
	}
	sl.bind(conn)
	s.metrics.SSEConnects.Inc()
	s.joinStream(r.Context(), conn, channels, since[1:])

	select {
	case <-conn.Done(): // closed by the hub: revoked, drained, slow, dead
	case <-r.Context().Done(): // the client went away
	}
	s.hub.Remove(conn)
	st.finish()
	return nil
}

// joinStream joins conn to the channels of its URL, in order, each as a
// subscribe frame with ref = its position (1 for the first) and its since
// would: the reply is `subscribed`, or the same error frame a socket gets,
// naming the channel.
func (s *Server) joinStream(ctx context.Context, conn *hub.Conn, channels, since []string) {
	for i, ch := range channels {
		if conn.Closing() {
			return
		}
		ref := int64(i + 1)
		var code, msg string
		kind, id, err := events.ParseChannel(ch)
		switch {
		case errors.Is(err, events.ErrBadChannel):
			code, msg, ch = codeBadRequest, "invalid channel name", "" // not echoed
		case err != nil:
			code, msg = codeNotFound, "unknown channel"
		default:
			code, msg = s.join(ctx, conn, ref, ch, since[i], kind, id)
		}
		if code != "" {
			s.metrics.ClientErrors.WithLabelValues(code).Inc()
			conn.Send(appendError(nil, ref, ch, code, msg))
		}
	}
}

// handleSSEPreflight answers the CORS preflight a browser may send before
// an EventSource on another origin reconnects with Last-Event-ID.
func (s *Server) handleSSEPreflight(c echo.Context) error {
	origin := c.Request().Header.Get("Origin")
	if origin == "" || !s.originAllowed(c.Request()) {
		return s.refuse(c, errForbiddenOrigin)
	}
	h := c.Response().Header()
	allowOrigin(h, origin)
	h.Set("Access-Control-Allow-Methods", "GET")
	h.Set("Access-Control-Allow-Headers", "Last-Event-ID")
	h.Set("Access-Control-Max-Age", "600")
	return c.NoContent(http.StatusNoContent)
}

// allowOrigin lets a browser page of origin (already checked against the
// allow-list) read the response, with its cookies, as a WebSocket of that
// page could.
func allowOrigin(h http.Header, origin string) {
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Allow-Credentials", "true")
	h.Add("Vary", "Origin")
}

// sseStream is the hub.Transport of one SSE response. Write, Ping and Close
// take turns on the response through lock; once ended, nothing touches the
// response any more. The handler's goroutine owns the response and ends the
// stream by returning, after finish.
type sseStream struct {
	w  http.ResponseWriter // net/http's own: echo's wrapper is reused once the handler returns
	rc *http.ResponseController

	lock  chan struct{} // one slot: held while the response is written
	ended atomic.Bool   // no more writes: closed, dropped or finished

	graceful bool         // a close frame went out; guarded by lock
	cursor   streamCursor // guarded by lock
	idBuf    []byte       // the id line being written; guarded by lock
}

var _ hub.Transport = (*sseStream)(nil)

var errStreamEnded = errors.New("sse: stream ended")

// startStream answers the request with the stream's headers, flushed, and
// lifts the server's deadlines from the connection: a stream lasts as long
// as the client stays, and each write gets a deadline of its own.
func startStream(c echo.Context, cur streamCursor) (*sseStream, error) {
	w := c.Response().Writer
	rc := http.NewResponseController(w)
	for _, set := range []func(time.Time) error{rc.SetReadDeadline, rc.SetWriteDeadline} {
		if err := set(time.Time{}); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return nil, fmt.Errorf("lift deadline: %w", err)
		}
	}
	h := c.Response().Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	// One response per connection: a stream that ended (perhaps with its
	// write deadline in the past) never serves another request.
	h.Set("Connection", "close")
	if origin := c.Request().Header.Get("Origin"); origin != "" {
		allowOrigin(h, origin) // refuseEarly checked it
	}
	c.Response().WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil, fmt.Errorf("flush headers: %w", err)
	}
	return &sseStream{w: w, rc: rc, lock: make(chan struct{}, 1), cursor: cur}, nil
}

// acquire takes the stream's turn, or gives up when ctx is done.
func (st *sseStream) acquire(ctx context.Context) error {
	select {
	case st.lock <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if st.ended.Load() {
		<-st.lock
		return errStreamEnded
	}
	return nil
}

func (st *sseStream) releaseTurn() { <-st.lock }

// deadline gives the next writes ctx's deadline.
func (st *sseStream) deadline(ctx context.Context) {
	d, _ := ctx.Deadline() // none: the zero time, no deadline
	st.rc.SetWriteDeadline(d)
}

// Write sends each frame as one SSE event, with the stream's cursor as its
// id when the frame moves it (events, welcome, subscribed), and flushes
// them together.
func (st *sseStream) Write(deadline time.Time, frames [][]byte) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := st.acquire(ctx); err != nil {
		return err
	}
	defer st.releaseTurn()
	st.deadline(ctx)
	for _, frame := range frames {
		var id []byte
		if st.cursor.note(frame) {
			id = append(st.cursor.appendTo(append(st.idBuf[:0], "id: "...)), '\n')
			st.idBuf = id
		}
		if err := writeEvent(st.w, id, frame); err != nil {
			return err
		}
	}
	return st.rc.Flush()
}

// pingEvent is the heartbeat: an event named ping with empty data. Unlike a
// comment line, EventSource hands it to a listener, so a client can tell a
// quiet stream from a dead one; onmessage does not see it.
const pingEvent = "event: ping\ndata:\n\n"

// Ping writes a heartbeat. A stream has no answer to wait for: a peer that
// is gone fails this write, or a later one, at its deadline.
func (st *sseStream) Ping(ctx context.Context) error {
	if err := st.acquire(ctx); err != nil {
		return err
	}
	defer st.releaseTurn()
	st.deadline(ctx)
	if _, err := io.WriteString(st.w, pingEvent); err != nil {
		return err
	}
	return st.rc.Flush()
}

// Close tells the client why the stream ends, in a close frame (the
// WebSocket close code and reason), and ends the stream; the handler then
// ends the response. A writer that holds the stream beyond
// streamCloseTimeout is cut off instead.
func (st *sseStream) Close(code int, reason string) error {
	ctx, cancel := context.WithTimeout(context.Background(), streamCloseTimeout)
	defer cancel()
	if err := st.acquire(ctx); err != nil {
		if errors.Is(err, errStreamEnded) {
			return nil
		}
		return st.CloseNow()
	}
	defer st.releaseTurn()
	st.ended.Store(true)
	st.rc.SetWriteDeadline(time.Now().Add(streamCloseTimeout))
	if err := writeEvent(st.w, nil, closeFrame(code, reason)); err != nil {
		return err
	}
	if err := st.rc.Flush(); err != nil {
		return err
	}
	st.graceful = true
	return nil
}

// CloseNow ends the stream at once: a write in progress fails now, and no
// other starts. It never blocks.
func (st *sseStream) CloseNow() error {
	st.ended.Store(true)
	return st.rc.SetWriteDeadline(time.Now())
}

// finish is the handler's last word on the response: it ends the stream,
// waits for a write in progress to fail or finish, and leaves the end of
// the response (its last chunk) time to go out after a close frame.
func (st *sseStream) finish() {
	st.ended.Store(true)
	st.rc.SetWriteDeadline(time.Now())
	st.lock <- struct{}{}
	if st.graceful {
		st.rc.SetWriteDeadline(time.Now().Add(streamCloseTimeout))
	}
	<-st.lock
}

// closeFrame is {"type":"close","code":…,"reason":…}.
func closeFrame(code int, reason string) []byte {
	r, _ := json.Marshal(reason)
	b := append([]byte(`{"type":"close","code":`), strconv.Itoa(code)...)
	b = append(b, `,"reason":`...)
	b = append(b, r...)
	return append(b, '}')
}

// writeEvent writes one SSE event: the id line when id is not nil (it holds
// "id: …\n"), frame as data lines, and the blank line that dispatches it. A
// frame normally holds no line break, but event data is the publisher's
// JSON, whose whitespace may: each line becomes a data line, and the client
// joins them with LF, which is JSON whitespace too.
func writeEvent(w http.ResponseWriter, id, frame []byte) error {
	if id != nil {
		if _, err := w.Write(id); err != nil {
			return err
		}
	}
	for {
		i := bytes.IndexAny(frame, "\r\n")
		line := frame
		if i >= 0 {
			line = frame[:i]
		}
		if _, err := io.WriteString(w, "data: "); err != nil {
			return err
		}
		if _, err := w.Write(line); err != nil {
			return err
		}
		if i < 0 {
			_, err := io.WriteString(w, "\n\n")
			return err
		}
		if _, err := io.WriteString(w, "\n"); err != nil {
			return err
		}
		rest := frame[i+1:]
		if frame[i] == '\r' && len(rest) > 0 && rest[0] == '\n' {
			rest = rest[1:]
		}
		frame = rest
	}
}
