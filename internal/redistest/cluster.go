package redistest

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of redis-server processes owned by one test:
// masters with replicas, created with `redis-cli --cluster create`.
type Cluster struct {
	tb    testing.TB
	Nodes []*Server // every node, in the order they were started
}

// ClusterNodeTimeout is the cluster-node-timeout of the nodes StartCluster
// starts: a master that stops answering for this long is failed over.
const ClusterNodeTimeout = time.Second

// StartCluster starts masters × (1 + replicas) cluster-enabled
// redis-server processes on free loopback ports, joins them with
// `redis-cli --cluster create … --cluster-replicas replicas --cluster-yes`
// (slots spread evenly over the masters; one master without replicas takes
// every slot itself) and waits until every node sees
// the cluster healthy. Extra args go to every node. The nodes are stopped
// when the test ends.
func StartCluster(tb testing.TB, masters, replicas int, args ...string) *Cluster {
	tb.Helper()
	cliPath(tb)
	c := &Cluster{tb: tb}
	nodeArgs := append([]string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", strconv.Itoa(int(ClusterNodeTimeout.Milliseconds())),
		// A replica that lost its master a while ago may still take over.
		"--cluster-replica-validity-factor", "0",
		"--appendonly", "no",
	}, args...)
	addrs := make([]string, 0, masters*(1+replicas))
	for range masters * (1 + replicas) {
		s := Start(tb, nodeArgs...)
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr)
	}
	if masters == 1 && replicas == 0 {
		// redis-cli creates clusters of three masters or more; one node
		// takes every slot by itself.
		rdb := redis.NewClient(&redis.Options{Addr: addrs[0]})
		err := rdb.ClusterAddSlotsRange(context.Background(), 0, 16383).Err()
		rdb.Close()
		if err != nil {
			tb.Fatalf("CLUSTER ADDSLOTSRANGE: %v", err)
		}
		c.WaitHealthy()
		return c
	}
	create := append([]string{"--cluster", "create"}, addrs...)
	create = append(create, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := c.cli(create...); err != nil {
		tb.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitHealthy()
	return c
}

// Addrs returns the address of every node.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// URL returns the cluster's address in go-redis's cluster URL form
// (redis.ParseClusterURL): the first node, the others as addr= seeds.
func (c *Cluster) URL() string {
	u := "redis://" + c.Nodes[0].Addr
	for i, n := range c.Nodes[1:] {
		sep := "&"
		if i == 0 {
			sep = "?"
		}
		u += sep + "addr=" + n.Addr
	}
	return u
}

// Client returns a go-redis cluster client, closed when the test ends.
func (c *Cluster) Client() *redis.ClusterClient {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	c.tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// Node returns the running node listening on addr, or nil.
func (c *Cluster) Node(addr string) *Server {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// ClusterNode is one node as CLUSTER NODES describes it.
type ClusterNode struct {
	ID, Addr string
	Master   bool
	MasterID string // a replica's master
	Failed   bool   // flagged fail or pfail, or disconnected
	Slots    [][2]int
}

// Topology returns the cluster as the node at addr sees it.
func (c *Cluster) Topology(addr string) ([]ClusterNode, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	text, err := rdb.ClusterNodes(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER NODES on %s: %w", addr, err)
	}
	var out []ClusterNode
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 {
			continue
		}
		n := ClusterNode{ID: f[0], Addr: strings.SplitN(f[1], "@", 2)[0], MasterID: f[3]}
		flags := f[2]
		if strings.Contains(flags, "myself") {
			n.Addr = addr // a lone node does not know its own IP yet
		}
		n.Master = strings.Contains(flags, "master")
		n.Failed = strings.Contains(flags, "fail") || f[7] != "connected"
		if n.MasterID == "-" {
			n.MasterID = ""
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // a slot being migrated or imported
			}
			lo, hi, found := strings.Cut(r, "-")
			a, _ := strconv.Atoi(lo)
			b := a
			if found {
				b, _ = strconv.Atoi(hi)
			}
			n.Slots = append(n.Slots, [2]int{a, b})
		}
		out = append(out, n)
	}
	return out, nil
}

// MasterOf returns the node that serves slot as master, as the first
// reachable node sees it.
func (c *Cluster) MasterOf(slot int) ClusterNode {
	c.tb.Helper()
	for _, s := range c.running() {
		nodes, err := c.Topology(s.Addr)
		if err != nil {
			continue
		}
		for _, n := range nodes {
			for _, r := range n.Slots {
				if n.Master && !n.Failed && slot >= r[0] && slot <= r[1] {
					return n
				}
			}
		}
	}
	c.tb.Fatalf("no master serves slot %d", slot)
	return ClusterNode{}
}

// Masters returns the masters that serve slots, as the first reachable
// node sees them.
func (c *Cluster) Masters() []ClusterNode {
	c.tb.Helper()
	for _, s := range c.running() {
		nodes, err := c.Topology(s.Addr)
		if err != nil {
			continue
		}
		var out []ClusterNode
		for _, n := range nodes {
			if n.Master && !n.Failed && len(n.Slots) > 0 {
				out = append(out, n)
			}
		}
		return out
	}
	c.tb.Fatal("no cluster node answers")
	return nil
}

// Reshard moves n slots from one master to another, by node id, with
// `redis-cli --cluster reshard`, which migrates the slots' keys too. It
// returns once redis-cli is done.
func (c *Cluster) Reshard(fromID, toID string, n int) {
	c.tb.Helper()
	out, err := c.cli("--cluster", "reshard", c.running()[0].Addr,
		"--cluster-from", fromID, "--cluster-to", toID,
		"--cluster-slots", strconv.Itoa(n), "--cluster-yes")
	if err != nil {
		c.tb.Fatalf("redis-cli --cluster reshard: %v\n%s", err, out)
	}
}

// MoveSlot moves one slot with its keys from one master to another, the
// way redis-cli does it: SETSLOT IMPORTING and MIGRATING, MIGRATE the keys
// in batches, then SETSLOT NODE on both and on every other master.
func (c *Cluster) MoveSlot(slot int, from, to ClusterNode) {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := redis.NewClient(&redis.Options{Addr: from.Addr})
	dst := redis.NewClient(&redis.Options{Addr: to.Addr})
	defer src.Close()
	defer dst.Close()
	must := func(what string, err error) {
		if err != nil {
			c.tb.Fatalf("move slot %d: %s: %v", slot, what, err)
		}
	}
	must("importing", dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", from.ID).Err())
	must("migrating", src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", to.ID).Err())
	host, port, _ := strings.Cut(to.Addr, ":")
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		must("getkeysinslot", err)
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		must("migrate", src.Do(ctx, args...).Err())
	}
	must("node on target", dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", to.ID).Err())
	must("node on source", src.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", to.ID).Err())
	for _, m := range c.Masters() {
		if m.ID != from.ID && m.ID != to.ID {
			o := redis.NewClient(&redis.Options{Addr: m.Addr})
			o.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", to.ID) // as redis-cli does; gossip would tell it too
			o.Close()
		}
	}
}

// WaitHealthy waits until every running node reports cluster_state:ok,
// knows a running master for every slot (after a master was killed: its
// replica took over), agrees with the others on who serves which slots,
// and every replica is in sync with its master.
func (c *Cluster) WaitHealthy() {
	c.tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var why string
	for time.Now().Before(deadline) {
		why = c.unhealthy()
		if why == "" {
			return
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, not synchronising
	}
	c.tb.Fatalf("cluster not healthy after 30s: %s", why)
}

// unhealthy says why the cluster is not healthy yet, "" when it is.
func (c *Cluster) unhealthy() string {
	var first string
	for _, s := range c.running() {
		rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := rdb.ClusterInfo(ctx).Result()
		cancel()
		rdb.Close()
		if err != nil {
			return err.Error()
		}
		if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
			return s.Addr + " reports: " + info
		}
		rdb = redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
		ctx, cancel = context.WithTimeout(context.Background(), time.Second)
		repl, err := rdb.Info(ctx, "replication").Result()
		cancel()
		rdb.Close()
		if err != nil {
			return err.Error()
		}
		if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
			return "replica " + s.Addr + " is not in sync with its master"
		}
		nodes, err := c.Topology(s.Addr)
		if err != nil {
			return err.Error()
		}
		var parts []string
		for _, n := range nodes {
			if n.Failed && c.Node(n.Addr) != nil && c.Node(n.Addr).cmd != nil {
				return s.Addr + " sees " + n.Addr + " failing"
			}
			if n.Master && len(n.Slots) > 0 {
				if node := c.Node(n.Addr); node == nil || node.cmd == nil {
					return s.Addr + " still sees slots on the stopped node " + n.Addr
				}
				parts = append(parts, fmt.Sprint(n.Addr, n.Slots))
			}
		}
		slices.Sort(parts)
		view := strings.Join(parts, ";")
		if first == "" {
			first = view
		} else if view != first {
			return "nodes disagree on the slots"
		}
	}
	return ""
}

// running returns the nodes that were not killed.
func (c *Cluster) running() []*Server {
	var out []*Server
	for _, n := range c.Nodes {
		if n.cmd != nil {
			out = append(out, n)
		}
	}
	return out
}

// cli runs redis-cli with args and returns its combined output.
func (c *Cluster) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, cliPath(c.tb), args...).CombinedOutput()
	return string(out), err
}

// cliPath returns the path of redis-cli, failing the test when it is
// missing (`make test` installs it with redis-server).
func cliPath(tb testing.TB) string {
	tb.Helper()
	p, err := exec.LookPath("redis-cli")
	if err != nil {
		tb.Fatalf("redis-cli not found (run `make test`, which installs it): %v", err)
	}
	return p
}
