package gateway

import (
	"container/list"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Slow clients (issue 12). Headers have http.Server's ReadHeaderTimeout;
// bodies have bodyDeadline; and connections that are not WebSockets, busy
// or idle, are capped by httpConns, so that a crowd of slow or idle clients
// cannot take the descriptors that sockets, health checks and publishes
// need.

// httpConns caps the connections that are not (or not yet) upgraded to
// WebSocket. At the cap, a new connection is let in and the one that has
// gone longest without starting or finishing a request is closed: a client
// trickling a body or idling on keep-alive loses its place to one that is
// being served now. A WebSocket leaves the count when it is hijacked, so
// sockets never compete with it. Nothing runs per connection: the work is
// done in http.Server's ConnState hook.
type httpConns struct {
	max     int
	onEvict func() // counts an eviction

	mu    sync.Mutex
	order list.List                  // of net.Conn, stalest first; guarded by mu
	elems map[net.Conn]*list.Element // guarded by mu
}

func newHTTPConns(limit int, onEvict func()) *httpConns {
	return &httpConns{max: limit, onEvict: onEvict, elems: make(map[net.Conn]*list.Element)}
}

// track is http.Server's ConnState hook.
func (h *httpConns) track(c net.Conn, st http.ConnState) {
	var stalest net.Conn
	h.mu.Lock()
	e, known := h.elems[c]
	switch st {
	case http.StateNew:
		h.elems[c] = h.order.PushBack(c)
		if h.order.Len() > h.max {
			front := h.order.Front()
			stalest = front.Value.(net.Conn)
			h.removeLocked(front)
		}
	case http.StateActive, http.StateIdle:
		if known { // not when it was evicted already
			h.order.MoveToBack(e)
		}
	case http.StateHijacked, http.StateClosed:
		if known {
			h.removeLocked(e)
		}
	}
	h.mu.Unlock()
	if stalest != nil {
		// Its serving goroutine sees the error, answers nothing and ends.
		stalest.Close()
		h.onEvict()
	}
}

// release stops counting c: an SSE stream, like a WebSocket, is a
// long-lived connection of its own and never the stalest request.
func (h *httpConns) release(c net.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e, ok := h.elems[c]; ok {
		h.removeLocked(e)
	}
}

func (h *httpConns) removeLocked(e *list.Element) {
	delete(h.elems, e.Value.(net.Conn))
	h.order.Remove(e)
}

// len returns how many connections are counted.
func (h *httpConns) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.order.Len()
}

// bodyDeadline gives every request body timeout to arrive, counted from the
// end of its headers; a body that takes longer fails the handler's read, or
// net/http's reading of what the handler left, and the connection is
// closed. Once the body has been read to its end the deadline is lifted, so
// a slow handler (a publish waiting on Redis) is not cut off by it.
// Requests without a body (WebSocket upgrades among them) are untouched.
func bodyDeadline(next http.Handler, timeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			rc := http.NewResponseController(w)
			if rc.SetReadDeadline(time.Now().Add(timeout)) == nil {
				r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// deadlineBody lifts its connection's read deadline at the end of the body.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}
