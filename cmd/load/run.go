package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sync/errgroup"
)

type options struct {
	gateways []string
	conns    int
	users    int
	rate     int
	duration time.Duration
	apiKey   string
	dialers  int
}

func parse(args []string, getenv func(string) string) (options, error) {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	gw := fs.String("gateways", "http://127.0.0.1:8080", "comma-separated gateway base URLs (loopback)")
	o := options{apiKey: getenv("HERALD_API_KEY")}
	fs.IntVar(&o.conns, "conns", 1000, "WebSocket connections to hold open")
	fs.IntVar(&o.users, "users", 100, "distinct users the connections belong to")
	fs.IntVar(&o.rate, "rate", 100, "events per second published (each to one user's channel)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long to publish")
	fs.IntVar(&o.dialers, "dialers", 64, "connections opened in parallel")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	for _, g := range strings.Split(*gw, ",") {
		u, err := url.Parse(strings.TrimSpace(g))
		if err != nil || u.Host == "" {
			return o, fmt.Errorf("-gateways: bad URL %q", g)
		}
		if h := u.Hostname(); h != "localhost" && !strings.HasPrefix(h, "127.") && h != "::1" {
			return o, fmt.Errorf("-gateways: %s is not a loopback address; load runs against local gateways only", h)
		}
		o.gateways = append(o.gateways, strings.TrimRight(u.String(), "/"))
	}
	switch {
	case o.apiKey == "":
		return o, errors.New("HERALD_API_KEY is not set")
	case o.conns < 1 || o.users < 1 || o.users > o.conns || o.rate < 1 || o.duration <= 0:
		return o, errors.New("want conns ≥ users ≥ 1, rate ≥ 1, duration > 0")
	}
	return o, nil
}

// run opens the connections, measures memory, publishes for the duration,
// waits briefly for stragglers and prints the report.
func run(ctx context.Context, args []string, getenv func(string) string, out io.Writer) error {
	o, err := parse(args, getenv)
	if err != nil {
		return err
	}
	rssBefore := totalRSS(o.gateways)

	sessions := make([]string, o.users)
	for u := range sessions {
		if sessions[u], err = createSession(ctx, o.gateways[u%len(o.gateways)], o.apiKey, fmt.Sprintf("load-%d", u)); err != nil {
			return err
		}
	}

	st := &stats{sent: map[string]time.Time{}}
	conns := make([]*websocket.Conn, o.conns)
	connectStart := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.dialers)
	for i := range o.conns {
		g.Go(func() error {
			gw := o.gateways[i%len(o.gateways)]
			c, _, err := websocket.Dial(gctx, "ws"+strings.TrimPrefix(gw, "http")+"/ws",
				&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + sessions[i%o.users]}}})
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			conns[i] = c
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		closeAll(conns)
		return err
	}
	connectTime := time.Since(connectStart)
	defer closeAll(conns)

	var readers sync.WaitGroup
	rctx, stopReaders := context.WithCancel(context.Background())
	defer stopReaders()
	for _, c := range conns {
		readers.Go(func() { st.read(rctx, c) })
	}
	time.Sleep(2 * time.Second) // let the sockets settle before the memory reading
	rssIdle := totalRSS(o.gateways)

	pub := &http.Client{Timeout: 10 * time.Second}
	tick := time.NewTicker(time.Second / time.Duration(o.rate))
	defer tick.Stop()
	end := time.After(o.duration)
	n := 0
publish:
	for {
		select {
		case <-ctx.Done():
			break publish
		case <-end:
			break publish
		case <-tick.C:
		}
		user := n % o.users
		n++
		go st.publish(pub, o.gateways[n%len(o.gateways)], o.apiKey, user, n)
	}
	// Expected deliveries: each event reaches every connection of its user.
	perUser := make([]int, o.users)
	for i := range o.conns {
		perUser[i%o.users]++
	}
	time.Sleep(3 * time.Second) // stragglers
	stopReaders()
	closeAll(conns)
	readers.Wait()

	st.mu.Lock()
	defer st.mu.Unlock()
	want := 0
	for id := range st.sent {
		u, _ := strconv.Atoi(strings.SplitN(id, "/", 2)[0])
		want += perUser[u]
	}
	slices.Sort(st.lat)
	fmt.Fprintf(out, "connections: %d to %d gateway(s) in %v (%.0f/s)\n", o.conns, len(o.gateways), connectTime.Round(time.Millisecond), float64(o.conns)/connectTime.Seconds())
	if rssBefore > 0 && rssIdle > 0 {
		fmt.Fprintf(out, "gateway memory: %.1f MiB before, %.1f MiB with the sockets idle: %.1f KiB per socket (RSS delta)\n",
			float64(rssBefore)/(1<<20), float64(rssIdle)/(1<<20), float64(rssIdle-rssBefore)/1024/float64(o.conns))
	}
	fmt.Fprintf(out, "events: %d published (%d failed) at %d/s for %v; %d of %d expected deliveries (%d duplicates)\n",
		len(st.sent), st.pubErrors, o.rate, o.duration, st.delivered, want, st.dups)
	if len(st.lat) > 0 {
		fmt.Fprintf(out, "delivery latency: p50 %v  p99 %v  max %v\n", pct(st.lat, 50), pct(st.lat, 99), st.lat[len(st.lat)-1])
	}
	return nil
}

type stats struct {
	mu        sync.Mutex
	sent      map[string]time.Time // "user/n" → publish time
	lat       []time.Duration
	delivered int
	dups      int
	pubErrors int
	seen      sync.Map // "conn pointer/id" dedup
}

func (s *stats) publish(c *http.Client, gw, key string, user, n int) {
	id := fmt.Sprintf("%d/%d", user, n)
	body, _ := json.Marshal(map[string]any{"channel": fmt.Sprintf("user:load-%d", user), "event": "load", "data": map[string]string{"id": id}})
	req, _ := http.NewRequest("POST", gw+"/api/publish", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	s.mu.Lock()
	s.sent[id] = start
	s.mu.Unlock()
	resp, err := c.Do(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if err != nil || resp.StatusCode != http.StatusAccepted {
		s.mu.Lock()
		delete(s.sent, id)
		s.pubErrors++
		s.mu.Unlock()
	}
}

func (s *stats) read(ctx context.Context, c *websocket.Conn) {
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			return
		}
		now := time.Now()
		var f struct {
			Type string `json:"type"`
			ID   string `json:"id"`
			Data struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		if json.Unmarshal(b, &f) != nil || f.Type != "event" {
			continue
		}
		key := fmt.Sprintf("%p/%s", c, f.ID)
		if _, dup := s.seen.LoadOrStore(key, true); dup {
			s.mu.Lock()
			s.dups++
			s.mu.Unlock()
			continue
		}
		s.mu.Lock()
		if t, ok := s.sent[f.Data.ID]; ok {
			s.lat = append(s.lat, now.Sub(t))
		}
		s.delivered++
		s.mu.Unlock()
	}
}

func createSession(ctx context.Context, gw, key, user string) (string, error) {
	body := fmt.Sprintf(`{"userId":%q,"ttl":3600}`, user)
	req, _ := http.NewRequestWithContext(ctx, "POST", gw+"/api/sessions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("create session: %w", err)
	}
	defer resp.Body.Close()
	var out struct {
		SessionID string `json:"sessionId"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("create session: status %d", resp.StatusCode)
	}
	return out.SessionID, nil
}

// totalRSS sums process_resident_memory_bytes from the gateways' /metrics;
// 0 when any is unreadable.
func totalRSS(gateways []string) int64 {
	var total int64
	for _, gw := range gateways {
		resp, err := http.Get(gw + "/metrics")
		if err != nil {
			return 0
		}
		sc := bufio.NewScanner(resp.Body)
		found := false
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "process_resident_memory_bytes "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				total += int64(f)
				found = true
			}
		}
		resp.Body.Close()
		if !found {
			return 0
		}
	}
	return total
}

func closeAll(conns []*websocket.Conn) {
	for _, c := range conns {
		if c != nil {
			c.CloseNow()
		}
	}
}

func pct(sorted []time.Duration, p int) time.Duration {
	return sorted[min(len(sorted)-1, len(sorted)*p/100)].Round(10 * time.Microsecond)
}
