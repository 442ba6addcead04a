package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/redistest"
)

const apiKey = "e2e-api-key-0123456789"

// proc is a program the test started; its output goes to a log file that a
// failing test copies to its artifacts.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // path of the combined stdout and stderr
	done chan struct{}
	err  error // Wait's result, once done is closed
}

// start runs bin with args and env, its output in dir/name.log. The process
// dies with the test binary (Pdeathsig) and is stopped at cleanup: SIGTERM,
// then SIGKILL after a grace period.
func start(t *testing.T, dir, name, bin string, env []string, args ...string) (*proc, io.Reader) {
	t.Helper()
	p := &proc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout = io.MultiWriter(logf, pw)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		pw.Close()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			keepLog(t, p.log)
		}
	})
	return p, pr
}

// kill ends the process at once, as a crash would, and waits for it.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// stop asks the process to end (SIGTERM) and kills it after grace.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// keepLog copies a process log into the test's artifacts.
func keepLog(t *testing.T, path string) {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return
	}
	dst := filepath.Join(artifactDir(t), filepath.Base(path))
	if err := os.WriteFile(dst, b, 0o644); err == nil {
		t.Logf("log saved: %s", dst)
	}
}

// gateway is one replica process.
type gateway struct {
	*proc
	node string
	addr string // host:port it listens on
}

func (g *gateway) url(path string) string { return "http://" + g.addr + path }

// cluster is Redis, two gateway replicas and nginx in front of them.
type cluster struct {
	t        *testing.T
	dir      string
	redis    *redistest.Server
	gateways map[string]*gateway // by node name
	nginx    *proc
	nginxDir string // its configuration, logs and temp paths
	lbAddr   string // nginx's host:port
}

// clusterOptions tune startCluster.
type clusterOptions struct {
	// origins returns HERALD_ALLOWED_ORIGINS once nginx's address is known;
	// nil leaves it unset (the gateway's own host, as the page sees it).
	origins func(lbAddr string) string
	// env is more of the gateways' environment ("NAME=value"), over the
	// defaults of startGateway.
	env []string
	// site, when set, edits nginx's site configuration (the deployment's
	// template, rendered) into a variant: a proxy that blocks WebSockets.
	site func(t *testing.T, conf string) string
}

// startCluster starts a private redis-server, gateways "a" and "b" sharing
// it (the real binaries, with the settings the compose stack uses), and
// nginx in front of them, and waits until a request through nginx is served.
func startCluster(t *testing.T, opts clusterOptions) *cluster {
	t.Helper()
	bins := binaries(t)
	nginxBin := need(t, "nginx")
	need(t, "redis-server")

	c := &cluster{t: t, dir: t.TempDir(), gateways: map[string]*gateway{}}
	c.redis = redistest.Start(t)
	lbPort := freePort(t)
	c.lbAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(lbPort))
	origins := ""
	if opts.origins != nil {
		origins = opts.origins(c.lbAddr)
	}
	for _, node := range []string{"a", "b"} {
		c.gateways[node] = c.startGateway(filepath.Join(bins, "gateway"), node, origins, opts.env)
	}
	for _, g := range c.gateways {
		waitHTTP(t, g.url("/readyz"), http.StatusOK, g.proc)
	}
	c.nginx, c.nginxDir = startNginx(t, nginxBin, map[string]string{
		"LB_LISTEN":     c.lbAddr,
		"LB_UPSTREAM_A": c.gateways["a"].addr,
		"LB_UPSTREAM_B": c.gateways["b"].addr,
	}, opts.site)
	waitHTTP(t, c.url("/nginx-health"), http.StatusOK, c.nginx)
	waitHTTP(t, c.url("/readyz"), http.StatusOK, c.nginx)
	return c
}

func (c *cluster) startGateway(bin, node, origins string, extraEnv []string) *gateway {
	t := c.t
	t.Helper()
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"REDIS_URL=" + c.redis.URL(),
		"HERALD_ADDR=127.0.0.1:0",
		"HERALD_NODE=" + node,
		"HERALD_DEV=true", "HERALD_DEV_FORCE=true", // a private Redis
		"HERALD_API_KEYS=" + apiKey,
		"HERALD_TRUSTED_PROXIES=127.0.0.1/32",
		"HERALD_DRAIN_TIMEOUT=200ms",
		"HERALD_CONNECT_LIMIT=1000", // every page comes from 127.0.0.1
		"HERALD_LOG_LEVEL=debug",
	}
	if origins != "" {
		env = append(env, "HERALD_ALLOWED_ORIGINS="+origins)
	}
	env = append(env, extraEnv...) // the last value of a name wins
	p, stdout := start(t, c.dir, "gateway-"+node, bin, env)
	addr, err := listeningAddr(stdout, 20*time.Second)
	if err != nil {
		t.Fatalf("gateway %s: %v\n%s", node, err, tail(p.log))
	}
	return &gateway{proc: p, node: node, addr: addr}
}

// listeningAddr reads the gateway's "listening on ADDR" line, then keeps
// draining its stdout.
func listeningAddr(stdout io.Reader, timeout time.Duration) (string, error) {
	type result struct {
		addr string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		br := bufio.NewReader(stdout)
		for {
			line, err := br.ReadString('\n')
			if addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on "); ok {
				ch <- result{addr: addr}
				io.Copy(io.Discard, br)
				return
			}
			if err != nil {
				ch <- result{err: fmt.Errorf("exited before listening: %v", err)}
				return
			}
		}
	}()
	select {
	case r := <-ch:
		return r.addr, r.err
	case <-time.After(timeout):
		return "", errors.New("not listening in time")
	}
}

func (c *cluster) url(path string) string { return "http://" + c.lbAddr + path }

// survivor returns the gateway that is not node.
func (c *cluster) survivor(node string) *gateway {
	for name, g := range c.gateways {
		if name != node {
			return g
		}
	}
	return nil
}

// api makes a JSON request through nginx, as an app backend would, and
// decodes the answer into out (when not nil).
func (c *cluster) api(method, path, bearer string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.url(path), rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %d %q: %w", method, path, resp.StatusCode, raw, err)
		}
	}
	return resp.StatusCode, nil
}

// session creates a session for user through the session API.
func (c *cluster) session(user string) string {
	c.t.Helper()
	var out struct {
		SessionID string `json:"sessionId"`
	}
	st, err := c.api("POST", "/api/sessions", apiKey, map[string]any{"userId": user, "ttl": 600}, &out)
	if err != nil || st != http.StatusCreated {
		c.t.Fatalf("create session: %d %v", st, err)
	}
	return out.SessionID
}

// ticket gets a one-time connect ticket for a session, as an app backend does.
func (c *cluster) ticket(sid string) (string, int, error) {
	var out struct {
		Ticket string `json:"ticket"`
	}
	st, err := c.api("POST", "/api/tickets", sid, nil, &out)
	return out.Ticket, st, err
}

// logged reports whether a line of nginx's access log holds every part.
func (c *cluster) logged(parts ...string) bool {
	for _, line := range strings.Split(c.accessLog(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// accessLog returns nginx's access log so far (see startNginx for the format).
func (c *cluster) accessLog() string {
	b, _ := os.ReadFile(filepath.Join(c.nginxDir, "access.log"))
	return string(b)
}

// startNginx renders the deployment's nginx template with vars (then
// edit, when not nil) into a complete configuration in its own directory
// (pid, logs, temp paths) and runs nginx in the foreground, as one process
// (master_process off): it dies with the test binary (Pdeathsig), where a
// master's workers would outlive a killed test, still listening.
func startNginx(t *testing.T, bin string, vars map[string]string, edit func(*testing.T, string) string) (*proc, string) {
	t.Helper()
	tmpl, err := os.ReadFile(nginxTemplate)
	if err != nil {
		t.Fatal(err)
	}
	site, err := renderTemplate(string(tmpl), vars)
	if err != nil {
		t.Fatalf("%s: %v", nginxTemplate, err)
	}
	if edit != nil {
		site = edit(t, site)
	}
	// Run as root, nginx's workers take an unprivileged user, which must be
	// able to reach the temp paths: a directory of their own, not under the
	// test's private temp directory.
	dir, err := os.MkdirTemp("", "herald-e2e-nginx-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "herald.conf"), []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	main := fmt.Sprintf(`# Generated by the e2e tests around %[2]s.
daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 512; }
http {
    # Which replica served each request, the Origin a browser sent, and
    # whether a session cookie came along (not its value: a secret).
    map $cookie_sid $has_sid { "" no; default yes; }
    log_format e2e '$remote_addr "$request" $status origin="$http_origin" sid=$has_sid upstream=$upstream_addr';
    access_log %[1]s/access.log e2e;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    include %[1]s/herald.conf;
}
`, dir, nginxTemplate)
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + os.Getenv("PATH")}
	p, stdout := start(t, dir, "nginx", bin, env, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	go io.Copy(io.Discard, stdout)
	t.Cleanup(func() {
		if t.Failed() {
			keepLog(t, filepath.Join(dir, "error.log"))
			keepLog(t, filepath.Join(dir, "access.log"))
		}
	})
	return p, dir
}

var placeholder = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// renderTemplate fills ${NAME} placeholders as the nginx image's envsubst
// step does, and refuses a placeholder without a value.
func renderTemplate(tmpl string, vars map[string]string) (string, error) {
	var missing []string
	out := placeholder.ReplaceAllStringFunc(tmpl, func(m string) string {
		name := placeholder.FindStringSubmatch(m)[1]
		v, ok := vars[name]
		if !ok {
			missing = append(missing, name)
			return m
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("placeholders without a value: %v", missing)
	}
	return out, nil
}

// templatePlaceholders lists the ${NAME}s of a template.
func templatePlaceholders(tmpl string) map[string]bool {
	names := map[string]bool{}
	for _, m := range placeholder.FindAllStringSubmatch(tmpl, -1) {
		names[m[1]] = true
	}
	return names
}

// waitHTTP polls url until it answers want, failing the test after 20 s or
// when p exits.
func waitHTTP(t *testing.T, url string, want int, p *proc) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if p != nil && p.exited() {
			t.Fatalf("%s exited while waiting for %s (%v)\n%s", p.name, url, p.err, tail(p.log))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %d within 20s, last: %s", url, want, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eventually polls cond every 20 ms until it holds or timeout passes.
func eventually(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tail returns the end of a log file, for failure messages.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// freePort asks the kernel for a free loopback TCP port.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncLog is a concurrency-safe list of lines (browser console, events).
type syncLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *syncLog) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *syncLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

func (l *syncLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}
