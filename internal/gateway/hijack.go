package gateway

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/heraldgw/herald/internal/netpoll"
)

// hijackBuffers sizes the bufio buffers through which a hijacked WebSocket
// connection is read and written; they live as long as the socket. Zero
// keeps net/http's own (4 KiB each).
type hijackBuffers struct {
	read, write int
}

// meteredWriter is the http.ResponseWriter handed to websocket.Accept.
// The library takes the connection through the first http.Hijacker it
// finds (following Unwrap); this one gives it the client connection
// wrapped in a meter (see meter), with buffers sized by bufs, and watched
// by poller so that its reader may park (park.go).
type meteredWriter struct {
	http.ResponseWriter
	budget *frameBudget
	bufs   hijackBuffers
	poller *netpoll.Poller // where idle readers park; nil: they block

	writeTimeout time.Duration // bound of every write to the client; 0: none
	meter        *meter        // the client connection, once hijacked
	upgrade      bool          // the 101 is held back for the first write (WriteHeader)
}

// WriteHeader holds the library's 101 back instead of letting net/http
// write it at once: Hijack puts it in the socket's write buffer, and the
// socket's first message (the welcome, or a close frame) takes it to the
// client in the same write. Every socket's first step is a write (the
// join's welcome or its refusal), so the client never waits on the 101 for
// a read of the server; and a connect costs one write syscall less on each
// side (net/http flushes the 101 by itself in Hijack: 9 % of the gateway's
// CPU in a connect storm). Any other status goes through.
func (w *meteredWriter) WriteHeader(code int) {
	if code != http.StatusSwitchingProtocols {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.upgrade = true
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *meteredWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack hijacks the wrapped writer's connection and returns it metered.
//
// The bytes a client sends right after its upgrade request (its first
// frames: about one connection in seven) may already sit in net/http's
// reader at this point. They must end up inside the returned reader's
// buffer, because that is where the library looks for them (it takes
// Buffered() bytes and resets the reader); a reader merely chained under
// the new one would lose them and corrupt the stream. So the meter returns
// them first, and a Peek pulls them into the buffer before it is handed
// over.
func (w *meteredWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if r, ok := w.ResponseWriter.(*echo.Response); ok && w.upgrade {
		// What echo's WriteHeader would have recorded: the request is
		// answered, and nothing may answer it again on the connection
		// (the library's 500 when what follows fails).
		r.Status, r.Committed = http.StatusSwitchingProtocols, true
	}
	pre, _ := brw.Reader.Peek(brw.Reader.Buffered())
	pre = bytes.Clone(pre) // it aliases the buffer Reset keeps
	m := newMeter(conn, w.budget, pre)

	br := brw.Reader
	if w.bufs.read > 0 {
		br = bufio.NewReaderSize(m, max(w.bufs.read, len(pre)))
	} else {
		br.Reset(m) // net/http's buffer (4 KiB) is at least len(pre)
	}
	if _, err := br.Peek(len(pre)); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("refill hijacked reader: %w", err)
	}
	m.writeTimeout = w.writeTimeout
	bw := brw.Writer
	if w.bufs.write > 0 {
		bw = bufio.NewWriterSize(m, w.bufs.write)
	} else {
		bw.Reset(m) // from conn, to which net/http has reset it
	}
	if w.upgrade {
		if err := writeUpgrade(bw, w.Header()); err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("write 101: %w", err)
		}
	}
	m.watch(w.poller)
	w.meter = m
	return m, bufio.NewReadWriter(br, bw), nil
}

// writeUpgrade writes the 101 response with header h to bw, unflushed.
func writeUpgrade(bw *bufio.Writer, h http.Header) error {
	if _, err := bw.WriteString("HTTP/1.1 101 Switching Protocols\r\n"); err != nil {
		return err
	}
	if err := h.Write(bw); err != nil {
		return err
	}
	_, err := bw.WriteString("\r\n")
	return err
}

var _ http.Hijacker = (*meteredWriter)(nil)
