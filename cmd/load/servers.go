package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// servers are the processes under test: Herald replicas and their Redis,
// or baseline servers. When the tool started them it also stops them.
type servers struct {
	urls   []string // base URLs, http://127.0.0.1:port
	debug  []string // base URLs serving /debug/pprof/, "" where unknown
	pids   []int    // server processes (not Redis), for memory and CPU
	redis  string   // host:port of the Redis, "" for none
	dir    string   // logs of the processes the tool started
	procs  []*proc  // started by the tool, in start order
	stderr io.Writer
}

// proc is a child process and the goroutine that waits for it.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// startServers starts what o asks for, or describes the running servers
// of -gateways. The caller must stop them.
func startServers(ctx context.Context, o options, stderr io.Writer) (*servers, error) {
	s := &servers{stderr: stderr}
	if len(o.gateways) > 0 {
		s.urls, s.pids, s.redis = o.gateways, o.pids, o.redisAddr
		s.debug = make([]string, len(o.gateways))
		if o.target == "baseline" {
			copy(s.debug, o.gateways)
		}
		return s, nil
	}
	dir, err := os.MkdirTemp("", "herald-load-")
	if err != nil {
		return nil, err
	}
	s.dir = dir
	if err := s.start(ctx, o); err != nil {
		s.stop(true)
		return nil, err
	}
	return s, nil
}

func (s *servers) start(ctx context.Context, o options) error {
	if o.target == "baseline" {
		for i := range o.replicas {
			p, addr, err := s.spawn(ctx, fmt.Sprintf("baseline-%d", i), o.baselineBin, []string{"-addr", "127.0.0.1:0"}, nil)
			if err != nil {
				return err
			}
			s.urls = append(s.urls, "http://"+addr)
			s.debug = append(s.debug, "http://"+addr)
			s.pids = append(s.pids, p.cmd.Process.Pid)
		}
		return nil
	}
	if err := s.startRedis(ctx, o.redisBin); err != nil {
		return err
	}
	for i := range o.replicas {
		debugAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort()))
		env := []string{
			"PATH=" + os.Getenv("PATH"),
			"REDIS_URL=redis://" + s.redis,
			"HERALD_ADDR=127.0.0.1:0",
			"HERALD_API_KEYS=" + o.apiKey,
			"HERALD_NODE=" + fmt.Sprintf("load-%d", i),
			"HERALD_LOG_LEVEL=warn",
			"HERALD_DEBUG_ADDR=" + debugAddr,
			"HERALD_DRAIN_TIMEOUT=1s",
			// Limits stay on, high enough that a load run is never refused:
			// their checks (Redis scripts) are part of what is measured.
			"HERALD_CONNECT_LIMIT=100000000",
			"HERALD_MAX_CONNS_PER_USER=10000",
			"HERALD_PUBLISH_RATE=10000000",
			"HERALD_PUBLISH_BURST=10000000",
		}
		p, addr, err := s.spawn(ctx, fmt.Sprintf("gateway-%d", i), o.gatewayBin, nil, env)
		if err != nil {
			return err
		}
		s.urls = append(s.urls, "http://"+addr)
		s.debug = append(s.debug, "http://"+debugAddr)
		s.pids = append(s.pids, p.cmd.Process.Pid)
	}
	for _, u := range s.urls {
		if err := waitReady(ctx, u+"/readyz"); err != nil {
			return fmt.Errorf("%s not ready (logs in %s): %w", u, s.dir, err)
		}
	}
	return nil
}

// spawn starts a server that prints "listening on ADDR" on stdout and
// returns that address. Its stderr goes to a log file in s.dir.
func (s *servers) spawn(ctx context.Context, name, bin string, args, env []string) (*proc, string, error) {
	logf, err := os.Create(filepath.Join(s.dir, name+".log"))
	if err != nil {
		return nil, "", err
	}
	defer logf.Close() // the child keeps its own descriptor
	cmd := exec.Command(bin, args...)
	if env != nil {
		cmd.Env = env
	}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	s.procs = append(s.procs, p)
	addr := make(chan string, 1)
	go func() { // ends when the process closes its stdout, at exit
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening on "); ok {
				select {
				case addr <- strings.TrimSpace(a):
				default:
				}
			}
		}
		cmd.Wait()
	}()
	select {
	case a := <-addr:
		return p, a, nil
	case <-p.done:
		return nil, "", fmt.Errorf("%s exited at start (log: %s)", name, logf.Name())
	case <-time.After(15 * time.Second):
		return nil, "", fmt.Errorf("%s did not say where it listens (log: %s)", name, logf.Name())
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
}

// startRedis starts the tool's own redis-server on a free loopback port,
// without persistence.
func (s *servers) startRedis(ctx context.Context, bin string) error {
	port := strconv.Itoa(freePort())
	s.redis = "127.0.0.1:" + port
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", s.dir, "--logfile", filepath.Join(s.dir, "redis.log"))
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	p := &proc{name: "redis", cmd: cmd, done: make(chan struct{})}
	s.procs = append(s.procs, p)
	go func() { cmd.Wait(); close(p.done) }()
	rdb := redis.NewClient(&redis.Options{Addr: s.redis, MaxRetries: -1})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := rdb.Ping(pctx).Err()
		cancel()
		switch {
		case err == nil:
			return nil
		case time.Now().After(deadline) || ctx.Err() != nil:
			return fmt.Errorf("redis-server on %s not ready: %w", s.redis, err)
		}
		select {
		case <-p.done:
			return fmt.Errorf("redis-server exited (log in %s)", s.dir)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop ends every process the tool started, last first: SIGTERM, then
// SIGKILL after a grace period. Their logs are removed unless keepLogs.
func (s *servers) stop(keepLogs bool) {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	s.procs = nil
	if s.dir != "" && !keepLogs {
		os.RemoveAll(s.dir)
	}
}

// waitReady polls url until it answers 200.
func waitReady(ctx context.Context, url string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freePort returns a free loopback TCP port below Linux's ephemeral range
// (32768–60999), so that the sockets the run opens cannot take it between
// this check and the server's listen.
func freePort() int {
	for {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			l.Close()
			return port
		}
	}
}
