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
	"slices"
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
	redis  string   // host:port of the Redis (a cluster's first node), "" for none
	nodes  []string // with -shards: every node of the Redis Cluster
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
	var redisEnv []string
	switch {
	case o.memory:
		// No REDIS_URL: the gateway runs on its in-memory twins.
	case o.shards > 0:
		if err := s.startRedisCluster(ctx, o.redisBin, o.shards); err != nil {
			return err
		}
		u := "redis://" + s.nodes[0]
		for i, n := range s.nodes[1:] {
			u += map[bool]string{true: "?", false: "&"}[i == 0] + "addr=" + n
		}
		// No replicas here: publishes wait for none.
		redisEnv = []string{"REDIS_URL=" + u, "HERALD_REDIS_MODE=cluster", "HERALD_REDIS_REPLICA_ACKS=0"}
	default:
		if err := s.startRedis(ctx, o.redisBin); err != nil {
			return err
		}
		redisEnv = []string{"REDIS_URL=redis://" + s.redis}
	}
	for i := range o.replicas {
		debugAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort()))
		env := append([]string{
			"PATH=" + os.Getenv("PATH"),
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
		}, redisEnv...)
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
	addr, err := s.startRedisNode(ctx, bin, "redis", s.dir)
	s.redis = addr
	return err
}

// startRedisCluster starts n cluster-enabled redis-servers, gives each an
// equal share of the slots, joins them and waits until every node sees the
// cluster healthy.
func (s *servers) startRedisCluster(ctx context.Context, bin string, n int) error {
	for i := range n {
		dir := filepath.Join(s.dir, fmt.Sprintf("redis-%d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		addr, err := s.startRedisNode(ctx, bin, fmt.Sprintf("redis-%d", i), dir,
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000")
		if err != nil {
			return err
		}
		s.nodes = append(s.nodes, addr)
	}
	s.redis = s.nodes[0]
	var clients []*redis.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i, addr := range s.nodes {
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		clients = append(clients, c)
		lo, hi := i*16384/n, (i+1)*16384/n-1
		if err := c.ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
			return fmt.Errorf("cluster addslots on %s: %w", addr, err)
		}
	}
	for _, addr := range s.nodes[1:] {
		host, port, _ := net.SplitHostPort(addr)
		if err := clients[0].ClusterMeet(ctx, host, port).Err(); err != nil {
			return fmt.Errorf("cluster meet %s: %w", addr, err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range clients {
		for {
			info, err := c.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, fmt.Sprintf("cluster_known_nodes:%d", n)) {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("redis cluster not healthy: %v %s", err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// startRedisNode starts one redis-server, without persistence, on a free
// loopback port with its files in dir, and waits until it answers.
func (s *servers) startRedisNode(ctx context.Context, bin, name, dir string, args ...string) (string, error) {
	port := strconv.Itoa(freePort())
	if slices.Contains(args, "--cluster-enabled") {
		port = strconv.Itoa(freeClusterPort())
	}
	addr := "127.0.0.1:" + port
	args = append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", dir, "--logfile", filepath.Join(dir, name+".log")}, args...)
	cmd := exec.Command(bin, args...)
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return addr, fmt.Errorf("start redis-server: %w", err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	s.procs = append(s.procs, p)
	go func() { cmd.Wait(); close(p.done) }()
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := rdb.Ping(pctx).Err()
		cancel()
		switch {
		case err == nil:
			return addr, nil
		case time.Now().After(deadline) || ctx.Err() != nil:
			return addr, fmt.Errorf("redis-server on %s not ready: %w", addr, err)
		}
		select {
		case <-p.done:
			return addr, fmt.Errorf("redis-server exited (log in %s)", dir)
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

// freeClusterPort returns a free loopback TCP port whose cluster bus port
// (10,000 above) is free too, both below Linux's ephemeral range.
func freeClusterPort() int {
	for {
		port := 20000 + rand.IntN(2700)
		a, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		b, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		a.Close()
		if err == nil {
			b.Close()
			return port
		}
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
