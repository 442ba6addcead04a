package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// A worker is a child process of the load tool (the same binary, run as
// `load worker`) that holds a share of the sockets, so that more of them
// fit than one process's open-file limit allows. It reads its job as one
// JSON line on stdin, then commands ("snap", "resume", "stop"), one per
// line, and writes workerMsg lines on stdout.

// job is a worker's share of the sockets.
type job struct {
	Conns   []connSpec `json:"conns"`
	Dialers int        `json:"dialers"` // dials in flight at once
}

// connSpec is one socket to open.
type connSpec struct {
	I     int    `json:"i"`           // index of the socket in the whole run
	URL   string `json:"u"`           // ws://host:port/ws…
	Token string `json:"k,omitempty"` // bearer credential (a Herald session id)
	Sub   string `json:"s,omitempty"` // channel to subscribe to with a frame once welcomed
	Src   string `json:"a,omitempty"` // loopback source address to dial from
	// Stall makes a socket that stops reading once it is subscribed, until
	// the "resume" command; it then reads on to learn how it was closed.
	// Its frames count nowhere but in its own counters.
	Stall bool `json:"st,omitempty"`
}

// workerMsg is a line a worker writes: "progress" (every 250 ms), "ready"
// (every socket is open or failed) or "snap" (an answer to snap).
type workerMsg struct {
	Type      string `json:"type"`
	Connected int64  `json:"connected"`
	Failed    []int  `json:"failed,omitempty"` // indexes of sockets that never became ready (ready only)
	Delivered int64  `json:"delivered"`        // distinct event frames, since the start
	Dups      int64  `json:"dups"`
	Closed    int64  `json:"closed"` // sockets the server ended after they were ready
	// Codes counts Closed by the close code the socket read (1006: cut
	// without a close frame).
	Codes            map[int]int64 `json:"codes,omitempty"`
	StalledConnected int64         `json:"stalled_connected,omitempty"` // stalled sockets, not in Connected
	StalledClosed    int64         `json:"stalled_closed,omitempty"`    // stalled sockets the server ended, not in Closed
	StalledCodes     map[int]int64 `json:"stalled_codes,omitempty"`
	Errors           []string      `json:"errors,omitempty"`
	Hist             *histSnap     `json:"hist,omitempty"` // delivery latency since the last snap (snap); connect latency (ready)
}

// worker holds the sockets of one worker process.
type worker struct {
	out *json.Encoder
	mu  sync.Mutex // serialises writes to out and guards errs, failed, codes, stalledCodes

	connected atomic.Int64
	delivered atomic.Int64
	dups      atomic.Int64
	closed    atomic.Int64
	latency   histogram // publish → frame received
	connect   histogram // dial → welcomed (and subscribed)

	stalledConnected, stalledClosed atomic.Int64
	resume                          chan struct{} // closed by the "resume" command: stalled sockets read again

	errs         []string      // the first few distinct errors
	failed       []int         // indexes of sockets that never became ready
	codes        map[int]int64 // close codes read by sockets the server ended
	stalledCodes map[int]int64 // the same for stalled sockets

	socketsMu sync.Mutex
	sockets   map[*websocket.Conn]struct{} // open sockets; nil once stopping; guarded by socketsMu
}

// track adds ws to the open sockets and reports false when the worker is
// already stopping (ws is then closed).
func (w *worker) track(ws *websocket.Conn) bool {
	w.socketsMu.Lock()
	defer w.socketsMu.Unlock()
	if w.sockets == nil {
		ws.CloseNow()
		return false
	}
	w.sockets[ws] = struct{}{}
	return true
}

// closeAll closes every open socket, which ends their readers.
func (w *worker) closeAll() {
	w.socketsMu.Lock()
	open := w.sockets
	w.sockets = nil
	w.socketsMu.Unlock()
	for ws := range open {
		ws.CloseNow()
	}
}

const maxErrors = 5

func (w *worker) noteError(err string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.errs) < maxErrors {
		w.errs = append(w.errs, err)
	}
}

func (w *worker) send(m workerMsg) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.out.Encode(m)
}

func (w *worker) counters(typ string) workerMsg {
	m := workerMsg{Type: typ, Connected: w.connected.Load(), Delivered: w.delivered.Load(),
		Dups: w.dups.Load(), Closed: w.closed.Load(),
		StalledConnected: w.stalledConnected.Load(), StalledClosed: w.stalledClosed.Load()}
	w.mu.Lock()
	m.Codes, m.StalledCodes = maps.Clone(w.codes), maps.Clone(w.stalledCodes)
	w.mu.Unlock()
	return m
}

// noteClosed counts a socket the server ended, with the close code it read
// (1006 when the connection was cut without a close frame).
func (w *worker) noteClosed(stalled bool, err error) {
	code := int(websocket.CloseStatus(err))
	if code < 0 {
		code = int(websocket.StatusAbnormalClosure)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if stalled {
		w.stalledClosed.Add(1)
		w.stalledCodes[code]++
		return
	}
	w.closed.Add(1)
	w.codes[code]++
}

// workerProfileEnv names a folder where each worker writes its CPU profile
// (worker-PID.prof), to see what the load tool itself spends.
const workerProfileEnv = "HERALD_LOAD_WORKER_PROFILE"

// runWorker is the worker process's whole life. With profileDir set it
// writes its CPU profile there.
func runWorker(ctx context.Context, in io.Reader, out io.Writer, profileDir string) error {
	if profileDir != "" {
		f, err := os.Create(filepath.Join(profileDir, fmt.Sprintf("worker-%d.prof", os.Getpid())))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 256<<20)
	if !sc.Scan() {
		return fmt.Errorf("worker: no job: %v", sc.Err())
	}
	var j job
	if err := json.Unmarshal(sc.Bytes(), &j); err != nil {
		return fmt.Errorf("worker: job: %w", err)
	}
	w := &worker{out: json.NewEncoder(out), sockets: map[*websocket.Conn]struct{}{}, resume: make(chan struct{}),
		codes: map[int]int64{}, stalledCodes: map[int]int64{}}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var all sync.WaitGroup // every goroutine below
	defer all.Wait()
	defer w.closeAll()
	defer cancel()
	all.Go(func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				w.send(w.counters("progress"))
			}
		}
	})

	// Commands arrive while sockets are still opening; EOF means stop.
	cmds := make(chan string)
	all.Go(func() {
		defer close(cmds)
		for sc.Scan() {
			select {
			case cmds <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	})

	type dialKey struct {
		src   string
		stall bool
	}
	clients := map[dialKey]*http.Client{}
	for _, c := range j.Conns {
		if k := (dialKey{c.Src, c.Stall}); clients[k] == nil {
			clients[k] = dialClient(c.Src, c.Stall)
		}
	}
	var ready sync.WaitGroup
	ready.Add(len(j.Conns))
	sem := make(chan struct{}, max(j.Dialers, 1))
	all.Go(func() {
		for _, c := range j.Conns {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				ready.Done()
				continue
			}
			all.Go(func() { w.serve(ctx, clients[dialKey{c.Src, c.Stall}], c, sem, ready.Done) })
		}
	})
	readyDone := make(chan struct{})
	all.Go(func() {
		ready.Wait()
		m := w.counters("ready")
		ch := w.connect.take()
		m.Hist = &ch
		w.mu.Lock()
		m.Failed, m.Errors = w.failed, w.errs
		w.mu.Unlock()
		w.send(m)
		close(readyDone)
	})

	for cmd := range cmds {
		switch cmd {
		case "snap":
			<-readyDone
			m := w.counters("snap")
			h := w.latency.take()
			m.Hist = &h
			w.mu.Lock()
			m.Errors = w.errs
			w.mu.Unlock()
			w.send(m)
		case "resume":
			select {
			case <-w.resume:
			default:
				close(w.resume)
			}
		case "stop":
			return nil
		}
	}
	return nil
}

// dialClient returns the HTTP client that dials WebSockets from src. With
// stall its sockets get small TCP buffers (smallBuffers).
func dialClient(src string, stall bool) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	d.Control = func(network, address string, c syscall.RawConn) error {
		if src != "" {
			if err := bindNoPort(network, address, c); err != nil {
				return err
			}
		}
		if stall {
			return smallBuffers(network, address, c)
		}
		return nil
	}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// serve opens one socket, waits until it is welcomed (and subscribed),
// then counts its event frames until ctx ends. It frees its dial slot in
// sem once the socket is ready or failed, and calls done then.
func (w *worker) serve(ctx context.Context, hc *http.Client, c connSpec, sem chan struct{}, done func()) {
	start := time.Now()
	pending := true
	finish := func(err error) {
		if !pending {
			return
		}
		pending = false
		if err != nil {
			w.noteError(err.Error())
			w.mu.Lock()
			w.failed = append(w.failed, c.I)
			w.mu.Unlock()
		} else {
			if c.Stall {
				w.stalledConnected.Add(1)
			} else {
				w.connected.Add(1)
			}
			w.connect.record(time.Since(start).Microseconds())
		}
		<-sem
		done()
	}
	defer finish(fmt.Errorf("socket ended before it was ready"))

	opts := &websocket.DialOptions{HTTPClient: hc}
	if c.Token != "" {
		opts.HTTPHeader = http.Header{"Authorization": {"Bearer " + c.Token}}
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	ws, resp, err := websocket.Dial(dctx, c.URL, opts)
	cancel()
	if err != nil {
		if resp != nil {
			err = fmt.Errorf("dial: HTTP %d", resp.StatusCode)
		}
		finish(err)
		return
	}
	if !w.track(ws) {
		return
	}
	ws.SetReadLimit(1 << 20)

	welcomed, subscribed := false, c.Sub == ""
	var seen seqSet
	var buf bytes.Buffer // reused for every message
	for {
		// Reads take a context that is never cancelled, which spares
		// coder/websocket a context.AfterFunc per read; closeAll ends them.
		_, r, err := ws.Reader(context.Background())
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(r)
		}
		if err != nil {
			if !pending && ctx.Err() == nil {
				w.noteClosed(c.Stall, err)
				if !c.Stall {
					w.noteError("socket closed by the server: " + err.Error())
				}
			}
			return
		}
		msg := buf.Bytes()
		now := time.Now().UnixNano()
		frames(msg, func(f []byte) {
			if seq, sent, ok := parseEvent(f); ok {
				if c.Stall {
					return // a stalled socket's events measure nothing
				}
				if seen.add(seq) {
					w.delivered.Add(1)
				} else {
					w.dups.Add(1)
				}
				w.latency.record((now - sent) / 1000)
				return
			}
			switch t := frameType(f); {
			case t == "welcome":
				welcomed = true
				if c.Sub != "" {
					sub := fmt.Sprintf(`{"type":"subscribe","ref":1,"channel":%q}`, c.Sub)
					if err := ws.Write(ctx, websocket.MessageText, []byte(sub)); err != nil {
						finish(fmt.Errorf("subscribe: %w", err))
					}
				}
			case t == "subscribed":
				subscribed = true
			case len(t) > 6 && t[:6] == "error:":
				w.noteError(t)
			}
		})
		if pending && welcomed && subscribed {
			finish(nil)
			if c.Stall {
				// Stop reading: the socket's buffers fill, then the
				// server's writes to it block.
				select {
				case <-w.resume:
				case <-ctx.Done():
					return
				}
			}
		}
	}
}
