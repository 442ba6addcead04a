package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMaster is the master name the Sentinels of StartSentinel monitor.
const SentinelMaster = "herald"

// Sentinel is a primary with replicas, watched by Sentinel processes, all
// owned by one test.
type Sentinel struct {
	tb        testing.TB
	Data      []*Server // the primary first, then its replicas (roles change on failover)
	Sentinels []*Server
}

// StartSentinel starts a primary, replicas replicas of it and sentinels
// Sentinel processes (redis-server --sentinel) that monitor it with a
// quorum of 1, a down-after of 1 s and a failover timeout of 10 s. Extra
// args go to the data nodes. It returns once every replica is in sync and
// every Sentinel knows the replicas.
func StartSentinel(tb testing.TB, replicas, sentinels int, args ...string) *Sentinel {
	tb.Helper()
	s := &Sentinel{tb: tb}
	primary := Start(tb, args...)
	s.Data = append(s.Data, primary)
	host, port, _ := net.SplitHostPort(primary.Addr)
	for range replicas {
		s.Data = append(s.Data, Start(tb, append([]string{"--replicaof", host, port}, args...)...))
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found (run `make test`, which installs it): %v", err)
	}
	for range sentinels {
		dir := tb.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		text := fmt.Sprintf("sentinel monitor %s %s %s 1\n"+
			"sentinel down-after-milliseconds %[1]s 1000\n"+
			"sentinel failover-timeout %[1]s 10000\n"+
			"sentinel parallel-syncs %[1]s 1\n", SentinelMaster, host, port)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			tb.Fatal(err)
		}
		sn := &Server{tb: tb, dir: dir, conf: conf, args: []string{bin, "--sentinel"}}
		sn.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(tb, false)))
		sn.start()
		tb.Cleanup(sn.Kill)
		s.Sentinels = append(s.Sentinels, sn)
	}
	s.waitFor("the replicas to sync and the Sentinels to know them", func() string {
		return s.settled(replicas)
	})
	return s
}

// URL returns the address in go-redis's failover URL form
// (redis.ParseFailoverURL): the Sentinels, and the master name.
func (s *Sentinel) URL() string {
	u := "redis://" + s.Sentinels[0].Addr + "?master_name=" + SentinelMaster
	for _, sn := range s.Sentinels[1:] {
		u += "&addr=" + sn.Addr
	}
	return u
}

// Client returns a go-redis failover client, closed when the test ends.
func (s *Sentinel) Client() *redis.Client {
	addrs := make([]string, len(s.Sentinels))
	for i, sn := range s.Sentinels {
		addrs[i] = sn.Addr
	}
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: SentinelMaster, SentinelAddrs: addrs})
	s.tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// Primary returns the address of the primary as the first Sentinel sees it.
func (s *Sentinel) Primary() string {
	s.tb.Helper()
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Sentinels[0].Addr})
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	a, err := sc.GetMasterAddrByName(ctx, SentinelMaster).Result()
	if err != nil {
		s.tb.Fatalf("SENTINEL GET-MASTER-ADDR-BY-NAME: %v", err)
	}
	return net.JoinHostPort(a[0], a[1])
}

// Failover makes the first Sentinel fail the primary over to a replica
// (SENTINEL FAILOVER, no agreement needed) and returns the new primary's
// address once the Sentinel announces it. The old primary keeps running;
// the Sentinel turns it into a replica of the new one later.
func (s *Sentinel) Failover() string {
	s.tb.Helper()
	old := s.Primary()
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Sentinels[0].Addr})
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	err := sc.Failover(ctx, SentinelMaster).Err()
	cancel()
	if err != nil {
		s.tb.Fatalf("SENTINEL FAILOVER: %v", err)
	}
	var now string
	s.waitFor("the Sentinel to announce a new primary", func() string {
		if now = s.Primary(); now == old {
			return "still " + old
		}
		return ""
	})
	return now
}

// WaitReplicas waits until the primary has n replicas in sync (online),
// such as the old primary after a failover.
func (s *Sentinel) WaitReplicas(n int) {
	s.tb.Helper()
	s.waitFor(fmt.Sprintf("%d replicas online", n), func() string { return s.settled(n) })
}

// settled says why the primary does not have n online replicas known to
// every Sentinel yet; "" when it does.
func (s *Sentinel) settled(n int) string {
	primary := redis.NewClient(&redis.Options{Addr: s.primaryAddr(), MaxRetries: -1})
	defer primary.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	info, err := primary.Info(ctx, "replication").Result()
	if err != nil {
		return err.Error()
	}
	if got := countOnline(info); got < n {
		return fmt.Sprintf("%d of %d replicas online", got, n)
	}
	for _, sn := range s.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr, MaxRetries: -1})
		reps, err := sc.Replicas(ctx, SentinelMaster).Result()
		sc.Close()
		if err != nil {
			return err.Error()
		}
		ok := 0
		for _, r := range reps {
			if r["flags"] == "slave" && r["master-link-status"] == "ok" {
				ok++
			}
		}
		if ok < n {
			return fmt.Sprintf("sentinel %s knows %d of %d replicas", sn.Addr, ok, n)
		}
	}
	return ""
}

// primaryAddr is Primary without failing the test.
func (s *Sentinel) primaryAddr() string {
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Sentinels[0].Addr, MaxRetries: -1})
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a, err := sc.GetMasterAddrByName(ctx, SentinelMaster).Result()
	if err != nil || len(a) != 2 {
		return s.Data[0].Addr
	}
	return net.JoinHostPort(a[0], a[1])
}

// countOnline counts the "slaveN:…,state=online,…" lines of INFO replication.
func countOnline(info string) int {
	n := 0
	for _, line := range strings.Split(info, "\n") {
		if strings.HasPrefix(line, "slave") && strings.Contains(line, "state=online") {
			n++
		}
	}
	return n
}

// waitFor polls cond (which says what is still missing, "" when done)
// until it holds, failing the test after 30 s.
func (s *Sentinel) waitFor(what string, cond func() string) {
	s.tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	why := ""
	for time.Now().Before(deadline) {
		if why = cond(); why == "" {
			return
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, not synchronising
	}
	s.tb.Fatalf("timed out waiting for %s: %s", what, why)
}
