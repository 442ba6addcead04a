package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/heraldgw/herald"
	"github.com/heraldgw/herald/internal/redistest"
)

// The fault tests of the delivery promise (docs/DELIVERY.md): an event
// whose publish was acknowledged reaches every connected or resuming
// client of its channel exactly once, in order. Each test publishes a
// known sequence, breaks something real, and compares what every client
// received with what was acknowledged.

// resumer is a client that, like herald.js, reconnects to a live replica
// after any close and resumes its personal channel from the last event id
// it received.
type resumer struct {
	t     *testing.T
	sid   string
	addrs func() []string // replicas to (re)connect to

	mu         sync.Mutex
	ids        []string // event ids received, in order
	gaps       int      // welcomes that said recovered:false
	reconnects int
	codes      []int // close codes seen
}

func newResumer(t *testing.T, sid string, addrs func() []string) *resumer {
	return &resumer{t: t, sid: sid, addrs: addrs}
}

func (r *resumer) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ids) == 0 {
		return ""
	}
	return r.ids[len(r.ids)-1]
}

func (r *resumer) received() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids)
}

// run connects and reconnects until ctx is done. ready is closed after the
// first welcome.
func (r *resumer) run(ctx context.Context, ready chan<- struct{}) {
	first := true
	for ctx.Err() == nil {
		addrs := r.addrs()
		url := "ws://" + addrs[rand.IntN(len(addrs))] + "/ws"
		if last := r.last(); last != "" {
			url += "?since=" + last
		}
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: bearerHeader(r.sid)})
		if err != nil {
			time.Sleep(20 * time.Millisecond) // a replica restarting; try another
			continue
		}
		c.SetReadLimit(1 << 20)
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				r.mu.Lock()
				r.codes = append(r.codes, int(websocket.CloseStatus(err)))
				r.reconnects++
				r.mu.Unlock()
				break
			}
			fs, _ := splitFrames(b)
			for _, f := range fs {
				switch f.str("type") {
				case "welcome":
					if f["recovered"] == false {
						r.mu.Lock()
						r.gaps++
						r.mu.Unlock()
					}
					if first {
						first = false
						close(ready)
					}
				case "event":
					r.mu.Lock()
					r.ids = append(r.ids, f.str("id"))
					r.mu.Unlock()
				}
			}
		}
		c.CloseNow()
	}
}

// startResumers starts n resumers of one user and waits for their welcome.
func startResumers(t *testing.T, ctx context.Context, n int, sid string, addrs func() []string) []*resumer {
	t.Helper()
	var rs []*resumer
	for range n {
		r := newResumer(t, sid, addrs)
		ready := make(chan struct{})
		go r.run(ctx, ready)
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			t.Fatal("resumer not connected")
		}
		rs = append(rs, r)
	}
	return rs
}

// checkAll waits until every resumer has the last acknowledged id, then
// requires each to hold exactly the acknowledged ids, in order.
func checkAll(t *testing.T, rs []*resumer, acked []string) {
	t.Helper()
	want := acked[len(acked)-1]
	for i, r := range rs {
		deadline := time.Now().Add(30 * time.Second)
		for r.last() != want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		got := r.received()
		if !slices.Equal(got, acked) {
			d := firstDiff(got, acked)
			t.Errorf("client %d: received %d events, want the %d acknowledged, in order (first difference at %d: got %v, want %v; reconnects %d, gaps %d)",
				i, len(got), len(acked), d, got[max(d-2, 0):min(d+3, len(got))], acked[max(d-2, 0):min(d+3, len(acked))], r.reconnects, r.gaps)
		}
		if r.gaps > 0 {
			t.Errorf("client %d: %d resumes said recovered:false", i, r.gaps)
		}
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// publisher publishes n events on channel at about rate per second through
// the Go package and returns the acknowledged ids, in order; failed
// publishes are counted, not retried (the test decides what they mean).
func publishSeq(t *testing.T, p herald.Publisher, channel string, n int, rate int, during func(i int)) (acked []string, failed int) {
	t.Helper()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := range n {
		if during != nil {
			during(i)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		id, err := p.Publish(ctx, channel, "seq", i)
		cancel()
		if err != nil {
			failed++
		} else {
			acked = append(acked, id)
		}
		<-tick.C
	}
	return acked, failed
}

func TestFaultPubSubKilledMidStream(t *testing.T) {
	srv, rs := cluster(t, 2, map[string]string{"HERALD_HISTORY_SIZE": "2000"})
	sid := rs[0].newSession(t, "u")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var clients []*resumer
	for _, r := range rs {
		addr := r.addr
		clients = append(clients, startResumers(t, ctx, 2, sid, func() []string { return []string{addr} })...)
	}
	admin := srv.Client()
	p := herald.NewRedisPublisher(srv.Client(), herald.RedisConfig{HistorySize: 2000})
	acked, failed := publishSeq(t, p, "user:u", 1000, 2000, func(i int) {
		if i == 250 || i == 500 || i == 750 {
			if n, err := admin.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Result(); err != nil || n == 0 {
				t.Errorf("CLIENT KILL TYPE pubsub = %d, %v", n, err)
			}
		}
	})
	if failed > 0 {
		t.Fatalf("%d publishes failed; Redis itself stayed up", failed)
	}
	checkAll(t, clients, acked)
	for i, c := range clients {
		if c.reconnects > 0 {
			t.Errorf("client %d reconnected %d times; a pub/sub reconnect must not reach clients", i, c.reconnects)
		}
	}
}

func TestFaultRollingRestart(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL(), "HERALD_HISTORY_SIZE": "20000", "HERALD_DRAIN_TIMEOUT": "300ms"}
	var mu sync.Mutex
	reps := []*replica{startReplica(t, "r0", env), startReplica(t, "r1", env), startReplica(t, "r2", env)}
	addrs := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, r := range reps {
			if r != nil {
				out = append(out, r.addr)
			}
		}
		return out
	}
	sid := reps[0].newSession(t, "u")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clients := startResumers(t, ctx, 6, sid, addrs)

	p := herald.NewRedisPublisher(srv.Client(), herald.RedisConfig{HistorySize: 20000})
	const n, rate = 4000, 2000
	restarted := make(chan struct{})
	go func() { // restart each replica in turn while the stream runs
		defer close(restarted)
		for i := range reps {
			time.Sleep(400 * time.Millisecond)
			mu.Lock()
			old := reps[i]
			reps[i] = nil
			mu.Unlock()
			if err := old.stop(); err != nil {
				t.Errorf("stop %s: %v", old.name, err)
			}
			nr := startReplica(t, fmt.Sprintf("r%d-new", i), env)
			mu.Lock()
			reps[i] = nr
			mu.Unlock()
		}
	}()
	acked, failed := publishSeq(t, p, "user:u", n, rate, nil)
	<-restarted
	if failed > 0 {
		t.Fatalf("%d publishes failed; Redis stayed up", failed)
	}
	checkAll(t, clients, acked)
	var restarts int
	for _, c := range clients {
		restarts += c.reconnects
	}
	t.Logf("%d events at %d/s, 3 replicas restarted, %d client reconnects", n, rate, restarts)
}

func TestFaultRedisRestartWithAOF(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	_, rs := func() (*redistest.Server, []*replica) {
		var rs []*replica
		for i := range 2 {
			rs = append(rs, startReplica(t, fmt.Sprintf("r%d", i), map[string]string{"REDIS_URL": srv.URL(), "HERALD_HISTORY_SIZE": "5000"}))
		}
		return srv, rs
	}()
	sid := rs[0].newSession(t, "u")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var clients []*resumer
	for _, r := range rs {
		addr := r.addr
		clients = append(clients, startResumers(t, ctx, 1, sid, func() []string { return []string{addr} })...)
	}

	// Publish through the HTTP API of both replicas, as a worker would.
	hp := []herald.Publisher{}
	for _, r := range rs {
		p, err := herald.NewHTTPPublisher("http://"+r.addr, testAPIKey, herald.HTTPConfig{})
		if err != nil {
			t.Fatal(err)
		}
		hp = append(hp, p)
	}
	var acked []string
	failed := 0
	for i := range 600 {
		if i == 200 {
			srv.Kill()
		}
		if i == 260 {
			srv.Restart()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		id, err := hp[i%2].Publish(ctx, "user:u", "seq", i)
		cancel()
		if err != nil {
			failed++
			if i < 200 {
				t.Fatalf("publish %d failed with Redis up: %v", i, err)
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		acked = append(acked, id)
	}
	if failed == 0 {
		t.Error("no publish failed while Redis was down: failures must be loud")
	}
	t.Logf("%d publishes acknowledged, %d refused while Redis was away", len(acked), failed)
	checkAll(t, clients, acked)
	for i, c := range clients {
		if c.reconnects > 0 {
			t.Errorf("client %d reconnected %d times; open sockets must stay through a Redis restart", i, c.reconnects)
		}
	}
}

func TestFaultSlowConsumerResumes(t *testing.T) {
	srv, rs := cluster(t, 1, map[string]string{"HERALD_HISTORY_SIZE": "3000"})
	r := rs[0]
	sid := r.newSession(t, "u")
	c, _, err := websocket.Dial(context.Background(), r.wsURL(""), &websocket.DialOptions{HTTPHeader: bearerHeader(sid)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)

	// The client reads nothing while big events pile up, until the
	// gateway gives up on it.
	acked := stallUntilSlow(t, srv, r)
	// Now it reads: what reached its socket, then the 4009 close.
	var got []string
	var code websocket.StatusCode
	for {
		_, b, err := c.Read(context.Background())
		if err != nil {
			code = websocket.CloseStatus(err)
			break
		}
		fs, _ := splitFrames(b)
		for _, f := range fs {
			if f.str("type") == "event" {
				got = append(got, f.str("id"))
			}
		}
	}
	if code != 4009 {
		t.Errorf("close code %d, want 4009", code)
	}
	if len(got) == 0 || len(got) >= len(acked) {
		t.Fatalf("read %d of %d events before the close", len(got), len(acked))
	}
	more := r.publish(t, "user:u", "after", nil)
	acked = append(acked, more)

	cl := dial(t, r.wsURL("?since="+got[len(got)-1]), bearerHeader(sid))
	if w := cl.next(); w["recovered"] != true {
		t.Fatalf("welcome %v, want recovered:true", w)
	}
	got = append(got, cl.eventIDs(len(acked)-len(got))...)
	if !slices.Equal(got, acked) {
		t.Errorf("after resume: %d events, want the %d published in order (first difference at %d)", len(got), len(acked), firstDiff(got, acked))
	}
}

// stallUntilSlow publishes big events on user:u through Redis (history of
// 3000) until r closes a client with 4009, and returns their ids: the
// client of user u reads nothing meanwhile.
func stallUntilSlow(t *testing.T, srv *redistest.Server, r *replica) []string {
	t.Helper()
	big := strings.Repeat("x", 16<<10)
	p := herald.NewRedisPublisher(srv.Client(), herald.RedisConfig{HistorySize: 3000})
	var acked []string
	for i := 0; r.metric(t, `herald_closes_total{code="4009"}`) < 1; i++ {
		if i == 3000 {
			t.Fatal("3000 events published and the stalled client was never closed")
		}
		id, err := p.Publish(context.Background(), "user:u", "big", map[string]any{"i": i, "pad": big})
		if err != nil {
			t.Fatal(err)
		}
		acked = append(acked, id)
	}
	return acked
}

// --- replicas as real processes, for SIGKILL ---

var gatewayBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "herald-gw-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "gateway")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

type process struct {
	cmd  *exec.Cmd
	addr string
	logs *syncBuffer
}

func startProcess(t *testing.T, name string, env map[string]string) *process {
	t.Helper()
	bin, err := gatewayBin()
	if err != nil {
		t.Fatal(err)
	}
	return startProcessCmd(t, name, exec.Command(bin), env)
}

// startProcessCmd starts cmd (the gateway binary, perhaps behind a shell)
// with the test defaults and env, and waits until it is ready.
func startProcessCmd(t *testing.T, name string, cmd *exec.Cmd, env map[string]string) *process {
	t.Helper()
	cmd.Env = append(os.Environ(), "HERALD_ADDR=127.0.0.1:0", "HERALD_API_KEYS="+testAPIKey, "HERALD_NODE="+name,
		"HERALD_CONNECT_LIMIT=100000", "HERALD_MAX_CONNS_PER_USER=1000")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &process{cmd: cmd, logs: &syncBuffer{}}
	cmd.Stderr = p.logs
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		if cmd.ProcessState == nil {
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("%s did not start: %v\n%s", name, err, p.logs)
	}
	p.addr = strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
	eventually(t, name+" ready", func() bool {
		resp, err := http.Get("http://" + p.addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p
}

func TestFaultReplicaKilled(t *testing.T) {
	srv := redistest.Start(t)
	env := map[string]string{"REDIS_URL": srv.URL(), "HERALD_HISTORY_SIZE": "5000"}
	a, b := startProcess(t, "a", env), startProcess(t, "b", env)
	st, body := (&replica{t: t, addr: a.addr}).api(t, "POST", "/api/sessions", testAPIKey, map[string]any{"userId": "u", "ttl": 600})
	if st != 201 {
		t.Fatalf("session: %d %v", st, body)
	}
	sid := body["sessionId"].(string)

	// Every client starts on a, the replica about to die, and resumes on b.
	var mu sync.Mutex
	live := []string{a.addr}
	addrs := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(live) }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clients := startResumers(t, ctx, 4, sid, addrs)
	p := herald.NewRedisPublisher(srv.Client(), herald.RedisConfig{HistorySize: 5000})
	acked, failed := publishSeq(t, p, "user:u", 1000, 2000, func(i int) {
		if i == 300 {
			a.cmd.Process.Signal(syscall.SIGKILL)
			mu.Lock()
			live = []string{b.addr}
			mu.Unlock()
		}
	})
	if failed > 0 {
		t.Fatalf("%d publishes failed", failed)
	}
	checkAll(t, clients, acked)
}

// TestSIGTERMDrainsAndExitsZero sends a real SIGTERM to a gateway process:
// its sockets are closed with 1012 and it exits with status 0.
func TestSIGTERMDrainsAndExitsZero(t *testing.T) {
	srv := redistest.Start(t)
	p := startProcess(t, "a", map[string]string{"REDIS_URL": srv.URL(), "HERALD_DRAIN_TIMEOUT": "300ms"})
	r := &replica{t: t, addr: p.addr}
	sid := r.newSession(t, "u")
	var cls []*client
	for range 3 {
		c := dial(t, r.wsURL(""), bearerHeader(sid))
		c.nextOf("welcome")
		cls = append(cls, c)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i, c := range cls {
		if code := c.closeCode(); code != websocket.StatusServiceRestart {
			t.Errorf("socket %d closed with %d, want 1012", i, code)
		}
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("gateway exited with %v, want status 0\n%s", err, p.logs)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("gateway did not exit after SIGTERM")
	}
}
