package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"sync"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/hub"
)

// maxBadFrames is how many bad frames in a row a client may send before
// it is closed with 1008; maxRefused is how many frames in a row it may
// send over its message rate before it is closed with 4008.
const (
	maxBadFrames = 3
	maxRefused   = 10
)

// client runs the read side of one socket: it decodes client frames and
// answers through the hub connection's queue.
type client struct {
	s    *Server
	conn *hub.Conn
	bad  int // bad frames in a row

	// The message rate (HERALD_CLIENT_MSG_RATE/_BURST) is per socket, so
	// local: a token bucket made at the first message, so that an idle
	// socket costs nothing.
	limiter *rate.Limiter
	refused int // frames in a row over the rate
}

// allow spends a token for one client frame. Over the rate the frame is
// answered rate_limited; a client that keeps going is closed with 4008.
func (cl *client) allow(ref int64) bool {
	if cl.limiter == nil {
		cl.limiter = rate.NewLimiter(rate.Limit(cl.s.cfg.ClientMsgRate), cl.s.cfg.ClientMsgBurst)
	}
	if cl.limiter.Allow() {
		cl.refused = 0
		return true
	}
	if cl.refused++; cl.refused > maxRefused {
		cl.conn.Close(hub.CloseRateLimited, "message rate exceeded")
		return false
	}
	cl.fail(ref, codeRateLimited, "too many messages, slow down")
	return false
}

// inbound is a client frame (PROTOCOL §4).
type inbound struct {
	Type    string `json:"type"`
	Ref     int64  `json:"ref"`
	Channel string `json:"channel"`
	Since   string `json:"since"`
}

// Client error codes (PROTOCOL §4), plus unavailable when the backend fails.
const (
	codeForbidden   = "forbidden"
	codeBadRequest  = "bad_request"
	codeNotFound    = "not_found"
	codeUnavailable = "unavailable"
	codeRateLimited = "rate_limited"
)

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readLoop reads frames until the socket fails or is closed, and reports
// false; or until the client has nothing more to send for now and the
// socket is parked (park.go), and reports true: m.resume then runs it
// again when there is.
func (cl *client) readLoop(ctx context.Context, ws *websocket.Conn, m *meter) (parked bool) {
	for {
		// A context that cannot be cancelled: the library then registers
		// nothing per read. Drain and revocation end the read by closing
		// the socket.
		m.wait(true)
		typ, r, err := ws.Reader(context.Background())
		m.wait(false)
		if errors.Is(err, errIdle) {
			if m.park() {
				return true
			}
			continue
		}
		if err != nil {
			cl.readFailed(err)
			return false
		}
		buf := bufPool.Get().(*bytes.Buffer)
		buf.Reset()
		n, err := buf.ReadFrom(io.LimitReader(r, readLimit+1))
		switch {
		case err != nil:
			bufPool.Put(buf)
			cl.readFailed(err)
			return false
		case n > readLimit:
			bufPool.Put(buf)
			cl.s.log.Debug("client frame over the read limit", "conn", cl.conn.ID)
			cl.conn.Close(hub.ClosePolicy, "frame too large")
			<-cl.conn.Done()
			return false
		case typ != websocket.MessageText:
			cl.badFrame(0, "frames must be JSON text")
		default:
			cl.handle(ctx, buf.Bytes())
		}
		bufPool.Put(buf)
		if cl.conn.Closing() {
			// Let the writer flush and finish the closing handshake, which
			// needs the read side to itself.
			<-cl.conn.Done()
			return false
		}
	}
}

// decodeFrame parses one client frame. It is strict about shape: type must
// be present and ref, when present, a number.
func decodeFrame(b []byte) (inbound, error) {
	var in inbound
	if err := json.Unmarshal(b, &in); err != nil {
		return inbound{}, errors.New("bad JSON")
	}
	if in.Type == "" {
		return inbound{}, errors.New("missing type")
	}
	return in, nil
}

func (cl *client) handle(ctx context.Context, b []byte) {
	in, err := decodeFrame(b)
	if err != nil {
		if cl.allow(0) {
			cl.badFrame(0, err.Error())
		}
		return
	}
	if !cl.allow(in.Ref) {
		return
	}
	switch in.Type {
	case "ping":
		cl.bad = 0
		cl.send(appendReply(nil, "pong", in.Ref, "", "", ""))
	case "subscribe":
		cl.subscribe(ctx, in)
	case "unsubscribe":
		cl.unsubscribe(in)
	default:
		cl.badFrame(in.Ref, "unknown type")
	}
}

func (cl *client) badFrame(ref int64, msg string) {
	cl.bad++
	if cl.bad > maxBadFrames {
		cl.conn.Close(hub.ClosePolicy, "too many bad frames")
		return
	}
	cl.fail(ref, codeBadRequest, msg)
}

func (cl *client) fail(ref int64, code, msg string) {
	cl.s.metrics.ClientErrors.WithLabelValues(code).Inc()
	cl.send(appendError(nil, ref, "", code, msg))
}

func (cl *client) send(frame []byte) { cl.conn.Send(frame) }

// subscribe applies the rules of PROTOCOL §2 and subscribes the channel.
func (cl *client) subscribe(ctx context.Context, in inbound) {
	kind, id, err := events.ParseChannel(in.Channel)
	switch {
	case errors.Is(err, events.ErrBadChannel):
		cl.badFrame(in.Ref, "invalid channel name")
		return
	case err != nil:
		cl.bad = 0
		cl.fail(in.Ref, codeNotFound, "unknown channel")
		return
	}
	cl.bad = 0
	if in.Since != "" {
		if _, _, err := events.ParseID(in.Since); err != nil {
			cl.fail(in.Ref, codeBadRequest, "since is not an event id")
			return
		}
	}
	if code, msg := cl.s.join(ctx, cl.conn, in.Ref, in.Channel, in.Since, kind, id); code != "" {
		cl.fail(in.Ref, code, msg)
	}
}

// join subscribes conn to channel (of kind and id, parsed; since valid or
// empty) as a subscribe frame with ref asks, for a socket's subscribe and
// an SSE stream's channels alike: it applies the rules of PROTOCOL §2, then
// joins, which queues the `subscribed` reply and what since missed. It
// returns the error code and message to answer with, or "" when joined or
// when the connection is closing (nothing to answer).
func (s *Server) join(ctx context.Context, conn *hub.Conn, ref int64, channel, since string, kind events.Kind, id string) (code, msg string) {
	if code, msg := s.authorize(ctx, conn.User, kind, id); code != "" {
		return code, msg
	}
	sctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
	err := s.hub.Join(sctx, conn, channel, since, func(j hub.Joined) []byte {
		recovered := "true"
		if j.Resumed {
			recovered = strconv.FormatBool(j.Recovered)
		}
		return appendReply(nil, "subscribed", ref, channel, recovered, j.Last)
	})
	cancel()
	switch {
	case err == nil, errors.Is(err, hub.ErrClosed):
		return "", ""
	case errors.Is(err, hub.ErrTooManyChannels):
		return codeBadRequest, "too many subscriptions"
	case errors.Is(err, hub.ErrForbidden):
		return codeForbidden, msgForbidden
	default:
		s.log.Warn("subscribe failed", "kind", events.Prefix(channel), "err", err)
		return codeUnavailable, "subscribe failed, try again"
	}
}

// msgForbidden is the one refusal of an effect channel, whatever the
// reason, so that a refusal never tells whether another user owns an id.
const msgForbidden = "not allowed to subscribe to this channel"

// authorize returns an error code and message when user may not
// subscribe the channel of kind and id.
func (s *Server) authorize(ctx context.Context, user string, kind events.Kind, id string) (code, msg string) {
	switch kind {
	case events.KindUser:
		if id != user {
			return codeForbidden, "not your channel"
		}
	case events.KindEffect:
		owner, err := s.broker.Owner(ctx, id)
		switch {
		case err != nil:
			s.log.Warn("owner lookup failed", "err", err)
			return codeUnavailable, "owner check failed, try again"
		case owner != "" && owner != user, owner == "" && !isUUID(id):
			return codeForbidden, msgForbidden
		}
	}
	return "", ""
}

func isUUID(s string) bool {
	u, err := uuid.Parse(s)
	return err == nil && len(s) == 36 && u.Version() == 4
}

func (cl *client) unsubscribe(in inbound) {
	if !events.ValidName(in.Channel) {
		cl.badFrame(in.Ref, "invalid channel name")
		return
	}
	cl.bad = 0
	cl.s.hub.Leave(cl.conn, in.Channel)
	cl.send(appendReply(nil, "unsubscribed", in.Ref, in.Channel, "", ""))
}

// Server frames. Channel names are validated and codes are constants, so
// only messages need escaping.

// welcomeFrame builds the welcome; recovered is "true", "false" or ""
// (absent: no ?since= was asked for).
func welcomeFrame(conn, user, node string, heartbeat int, recovered, last string) []byte {
	b, _ := json.Marshal(struct {
		Type      string `json:"type"`
		Conn      string `json:"conn"`
		User      string `json:"user"`
		Node      string `json:"node"`
		Heartbeat int    `json:"heartbeat"`
		Recovered *bool  `json:"recovered,omitempty"`
		Last      string `json:"last,omitempty"`
	}{"welcome", conn, user, node, heartbeat, parseBool(recovered), last})
	return b
}

func parseBool(s string) *bool {
	if s == "" {
		return nil
	}
	b := s == "true"
	return &b
}

// appendReply appends a subscribed, unsubscribed or pong frame; recovered
// is "true", "false" or "" (absent); last, when not empty, is the newest
// event id of the channel before this subscription, for the client to
// resume from should it reconnect before any event arrives.
func appendReply(dst []byte, typ string, ref int64, channel, recovered, last string) []byte {
	dst = append(dst, `{"type":"`...)
	dst = append(dst, typ...)
	dst = append(dst, `","ref":`...)
	dst = strconv.AppendInt(dst, ref, 10)
	if channel != "" {
		dst = append(dst, `,"channel":"`...)
		dst = append(dst, channel...)
		dst = append(dst, '"')
	}
	if recovered != "" {
		dst = append(dst, `,"recovered":`...)
		dst = append(dst, recovered...)
	}
	if last != "" { // an event id: digits and a dash, nothing to escape
		dst = append(dst, `,"last":"`...)
		dst = append(dst, last...)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// evictedFrame tells a client that it no longer receives channel because
// the channel's events belong to another user (an owned effect).
func evictedFrame(channel string) []byte {
	return []byte(`{"type":"unsubscribed","channel":"` + channel + `","reason":"forbidden"}`)
}

// gapFrame tells a client that events of channel were lost on their way to
// this replica and could not be recovered: refetch what depends on it.
func gapFrame(channel string) []byte {
	return []byte(`{"type":"gap","channel":"` + channel + `"}`)
}

// appendError appends an error frame answering the frame with ref; channel,
// when not empty, names the channel it is about (an SSE stream's refused
// channels).
func appendError(dst []byte, ref int64, channel, code, msg string) []byte {
	m, _ := json.Marshal(msg)
	dst = append(dst, `{"type":"error","ref":`...)
	dst = strconv.AppendInt(dst, ref, 10)
	if channel != "" { // validated: nothing to escape
		dst = append(dst, `,"channel":"`...)
		dst = append(dst, channel...)
		dst = append(dst, '"')
	}
	dst = append(dst, `,"code":"`...)
	dst = append(dst, code...)
	dst = append(dst, `","message":`...)
	dst = append(dst, m...)
	return append(dst, '}')
}
