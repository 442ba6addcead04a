// Package redistest starts private redis-server processes on free loopback
// ports for tests. It never touches a Redis it did not start.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server process owned by one test (or test package).
type Server struct {
	tb   testing.TB
	Addr string // host:port on loopback
	dir  string
	args []string
	conf string // a config file the server may rewrite (Sentinel's); "" for none
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts a redis-server on a free loopback port with persistence off
// and stops it when the test ends. Extra args are passed to redis-server
// (for example "--appendonly", "yes"). It fails the test when redis-server
// is not installed: `make test` installs it.
func Start(tb testing.TB, args ...string) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found (run `make test`, which installs it): %v", err)
	}
	s := &Server{tb: tb, dir: tb.TempDir(), args: append([]string{bin}, args...)}
	// A cluster node also listens on its port + 10000 (the cluster bus).
	bus := slices.Contains(args, "--cluster-enabled")
	tb.Cleanup(s.Kill)
	for attempt := 1; ; attempt++ {
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(tb, bus)))
		err := s.launch()
		if err == nil {
			return s
		}
		// Another process may take a free port before the server binds
		// it (load tools and other suites dial from the same range).
		if attempt == 5 || !strings.Contains(err.Error(), "Address already in use") {
			tb.Fatal(err)
		}
		os.Remove(filepath.Join(s.dir, "redis.log"))
	}
}

// URL returns the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr }

// Client returns a go-redis client for the server, closed when the test ends.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	s.tb.Cleanup(func() { c.Close() })
	return c
}

func (s *Server) start() {
	s.tb.Helper()
	if err := s.launch(); err != nil {
		s.tb.Fatal(err)
	}
}

// launch starts the server on s.Addr and waits until it answers.
func (s *Server) launch() error {
	_, port, _ := net.SplitHostPort(s.Addr)
	var args []string
	if s.conf != "" {
		args = append(args, s.conf) // the file comes first; Sentinel rewrites it
	}
	args = append(args, s.args[1:]...)
	args = append(args,
		"--port", port, "--bind", "127.0.0.1", "--dir", s.dir,
		"--daemonize", "no", "--protected-mode", "yes",
		"--logfile", filepath.Join(s.dir, "redis.log"))
	if s.conf == "" {
		// No snapshots; replicas sync at once rather than 5 s later.
		args = append(args, "--save", "", "--repl-diskless-sync-delay", "0")
	}
	cmd := exec.Command(s.args[0], args...)
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() { cmd.Wait(); close(s.done) }()
	return s.waitReady()
}

func (s *Server) waitReady() error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-s.done:
			s.cmd = nil
			return fmt.Errorf("redis-server exited: %s", s.Log())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s not ready: %w", s.Addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Log returns what the server wrote to its log file so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return string(b)
}

// Kill stops the server at once (SIGKILL), as a crash would. It is safe to
// call more than once.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Restart kills the server and starts it again on the same port and data
// directory (so an AOF, when enabled, is replayed).
func (s *Server) Restart() {
	s.tb.Helper()
	s.Kill()
	s.start()
}

// freePort asks the kernel for a free loopback TCP port; with bus, one
// whose port + 10000 is free too.
func freePort(tb testing.TB, bus bool) int {
	tb.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if !bus {
			l.Close()
			return port
		}
		if port+10000 <= 65535 {
			if b, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000))); err == nil {
				b.Close()
				l.Close()
				return port
			}
		}
		l.Close()
	}
}
