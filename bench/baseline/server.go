package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

const (
	queueLen     = 256 // frames a socket may have waiting before it is dropped as slow
	writeTimeout = 5 * time.Second
	writeBatch   = 32 // frames written under one deadline
	maxBody      = 1 << 20
)

// run serves until ctx is done, then closes every socket and returns.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("baseline", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	sctx, stop := context.WithCancel(context.Background())
	s := &server{ctx: sctx, log: log, subs: map[string]map[*conn]struct{}{}}
	hs := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())

	select {
	case <-ctx.Done():
	case err = <-served:
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	hs.Shutdown(shutCtx)
	cancel()
	stop() // ends every socket's reader and writer
	s.wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// server is the fan-out: channel → sockets in one map.
type server struct {
	ctx context.Context // the server's life; cancelled at shutdown
	log *slog.Logger
	seq atomic.Uint64  // event id sequence
	wg  sync.WaitGroup // every socket's reader and writer

	mu   sync.RWMutex
	subs map[string]map[*conn]struct{} // channel → its sockets; guarded by mu
}

// conn is one socket: its reader is the handler goroutine, its writer a
// goroutine that drains queue.
type conn struct {
	ws       *websocket.Conn
	queue    chan []byte
	done     chan struct{} // closed when the reader ends
	dropped  atomic.Bool
	channels []string // guarded by server.mu
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", s.handleWS)
	mux.HandleFunc("POST /api/publish", s.handlePublish)
	mux.HandleFunc("POST /api/publish/batch", s.handlePublishBatch)
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	return mux
}

func (s *server) handleWS(w http.ResponseWriter, r *http.Request) {
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		return // Accept answered the client
	}
	c := &conn{ws: ws, queue: make(chan []byte, queueLen), done: make(chan struct{})}
	if u := r.URL.Query().Get("user"); u != "" {
		s.subscribe(c, "user:"+u)
	}
	c.send([]byte(`{"type":"welcome"}`))
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.write(c)
	}()
	defer s.wg.Done()
	s.read(c)
}

// read handles the client's frames until the socket ends, then removes it.
func (s *server) read(c *conn) {
	defer func() {
		close(c.done)
		s.remove(c)
		c.ws.CloseNow()
	}()
	for {
		_, b, err := c.ws.Read(s.ctx)
		if err != nil {
			return
		}
		var f struct {
			Type    string `json:"type"`
			Ref     int    `json:"ref"`
			Channel string `json:"channel"`
		}
		if json.Unmarshal(b, &f) != nil || f.Type != "subscribe" || f.Channel == "" {
			continue
		}
		s.subscribe(c, f.Channel)
		reply, _ := json.Marshal(map[string]any{"type": "subscribed", "ref": f.Ref, "channel": f.Channel})
		c.send(reply)
	}
}

// write sends queued frames until the reader ends. Each wake-up writes
// what is queued by then, up to writeBatch frames, under one deadline: a
// context per frame would cost a quarter of the server's CPU under
// broadcast.
func (s *server) write(c *conn) {
	for {
		select {
		case <-c.done:
			return
		case b := <-c.queue:
			ctx, cancel := context.WithTimeout(s.ctx, writeTimeout)
			err := c.ws.Write(ctx, websocket.MessageText, b)
			for n := 1; n < writeBatch && err == nil; n++ {
				select {
				case b = <-c.queue:
					err = c.ws.Write(ctx, websocket.MessageText, b)
				default:
					n = writeBatch
				}
			}
			cancel()
			if err != nil {
				c.ws.CloseNow()
				return
			}
		}
	}
}

// send queues b without blocking; a socket whose queue is full is dropped.
func (c *conn) send(b []byte) {
	select {
	case c.queue <- b:
	default:
		if c.dropped.CompareAndSwap(false, true) {
			c.ws.CloseNow() // the reader sees it and cleans up
		}
	}
}

func (s *server) subscribe(c *conn, channel string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.subs[channel]
	if m == nil {
		m = map[*conn]struct{}{}
		s.subs[channel] = m
	}
	if _, ok := m[c]; !ok {
		m[c] = struct{}{}
		c.channels = append(c.channels, channel)
	}
}

func (s *server) remove(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range c.channels {
		delete(s.subs[ch], c)
		if len(s.subs[ch]) == 0 {
			delete(s.subs, ch)
		}
	}
	c.channels = nil
}

// publication is one publish request, Herald's shape.
type publication struct {
	Channel string          `json:"channel"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
}

func (s *server) handlePublish(w http.ResponseWriter, r *http.Request) {
	var p publication
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&p); err != nil || p.Channel == "" {
		http.Error(w, `{"error":{"code":"bad_request"}}`, http.StatusBadRequest)
		return
	}
	reply(w, map[string]string{"id": s.publish(p)})
}

func (s *server) handlePublishBatch(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Items []publication `json:"items"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&body); err != nil || len(body.Items) == 0 {
		http.Error(w, `{"error":{"code":"bad_request"}}`, http.StatusBadRequest)
		return
	}
	ids := make([]string, len(body.Items))
	for i, p := range body.Items {
		ids[i] = s.publish(p)
	}
	reply(w, map[string][]string{"ids": ids})
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	json.NewEncoder(w).Encode(v)
}

// publish encodes p's frame once and queues the same bytes for every
// subscriber of its channel.
func (s *server) publish(p publication) string {
	ms := time.Now().UnixMilli()
	id := strconv.FormatInt(ms, 10) + "-" + strconv.FormatUint(s.seq.Add(1), 10)
	if len(p.Data) == 0 {
		p.Data = json.RawMessage("null")
	}
	ch, _ := json.Marshal(p.Channel)
	ev, _ := json.Marshal(p.Event)
	frame := make([]byte, 0, 64+len(ch)+len(id)+len(ev)+len(p.Data))
	frame = append(frame, `{"type":"event","channel":`...)
	frame = append(frame, ch...)
	frame = append(frame, `,"id":"`...)
	frame = append(frame, id...)
	frame = append(frame, `","event":`...)
	frame = append(frame, ev...)
	frame = append(frame, `,"data":`...)
	frame = append(frame, p.Data...)
	frame = append(frame, `,"ts":`...)
	frame = strconv.AppendInt(frame, ms, 10)
	frame = append(frame, '}')

	s.mu.RLock()
	defer s.mu.RUnlock()
	for c := range s.subs[p.Channel] {
		c.send(frame)
	}
	return id
}
