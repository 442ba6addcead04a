package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// options are one run's settings.
type options struct {
	scenario  string        // idle, personal, broadcast, storm, ceiling, overload
	target    string        // herald or baseline
	replicas  int           // server processes to start
	shards    int           // Herald: 0 one redis-server; N a Redis Cluster of N masters, gateways in cluster mode
	memory    bool          // Herald: no Redis, the gateway's in-memory twins (single node)
	gateways  []string      // base URLs of running servers; none: start them
	pids      []int         // the running servers' process ids, for memory and CPU
	redisAddr string        // a running Redis (with -gateways, for its CPU and the Go publisher)
	publisher string        // http, batch, go or go-batch
	conns     int           // sockets (overload: the healthy ones)
	stalled   int           // overload: sockets that stop reading once subscribed, besides conns
	users     int           // distinct users (personal channels)
	rate      float64       // events per second (ceiling: the first step)
	duration  time.Duration // publishing time (ceiling: per step; idle: the hold)
	settle    time.Duration // wait between the last connect and the memory reading
	drain     time.Duration // longest wait for stragglers after publishing
	timeout   time.Duration // hard deadline of the whole run
	workers   int           // worker processes holding the sockets
	sources   int           // loopback source addresses 127.0.0.1…
	dialers   int           // dials in flight, in all
	inflight  int           // publish calls in flight
	batch     int           // events per batch call (publisher batch, go)
	payload   int           // bytes of event data
	ceilP99   time.Duration // ceiling: the p99 a step must keep
	ceilSteps int           // ceiling: most steps
	ceilMax   float64       // ceiling: highest rate tried

	gatewayBin, baselineBin, redisBin string
	cpuProfile                        string // where to write the server's CPU profile while publishing
	commandStats                      bool   // report Redis commandstats per event
	apiKey                            string
	commit                            string // the commit measured, recorded in the result
}

// defaultStalled is how many stalled sockets -scenario overload adds
// unless -stalled says otherwise.
const defaultStalled = 50

const defaultAPIKey = "load-tool-api-key-0123456789" // for the gateways the tool starts itself

func flags(o *options, fs *flag.FlagSet) (gateways, pids *string) {
	fs.StringVar(&o.scenario, "scenario", "personal", "idle, personal, broadcast, storm, ceiling or overload")
	fs.StringVar(&o.target, "target", "herald", "herald or baseline")
	fs.IntVar(&o.replicas, "replicas", 1, "server processes to start (Herald replicas share one Redis)")
	fs.IntVar(&o.shards, "shards", 0, "Herald: 0 starts one redis-server; N ≥ 1 a Redis Cluster of N masters (no replicas) and the gateways in cluster mode")
	fs.BoolVar(&o.memory, "memory", false, "Herald: start the gateway without Redis, on its in-memory twins (one replica)")
	gateways = fs.String("gateways", "", "comma-separated base URLs of running servers (loopback); empty: start them")
	pids = fs.String("pids", "", "with -gateways: the servers' process ids, for memory and CPU figures")
	fs.StringVar(&o.redisAddr, "redis", "", "with -gateways: the servers' Redis (host:port, loopback), for its CPU and -publisher go")
	fs.StringVar(&o.publisher, "publisher", "http", "http (POST /api/publish), batch (POST /api/publish/batch), go (herald.NewRedisPublisher: Publish) or go-batch (PublishBatch)")
	fs.IntVar(&o.conns, "conns", 1000, "sockets")
	fs.IntVar(&o.stalled, "stalled", -1, "overload: sockets besides -conns that subscribe, then stop reading (small TCP buffers); -1: 50")
	fs.IntVar(&o.users, "users", 0, "distinct users; 0: one per socket")
	fs.Float64Var(&o.rate, "rate", 100, "events per second, in all (ceiling: the first step)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "publishing time (ceiling: per step; idle: how long the sockets are held)")
	fs.DurationVar(&o.settle, "settle", 2*time.Second, "wait after the last connect before reading memory")
	fs.DurationVar(&o.drain, "drain", 5*time.Second, "longest wait for late deliveries after publishing")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "hard deadline of the run")
	fs.IntVar(&o.workers, "workers", 0, "worker processes for the sockets; 0: one per 15,000 sockets")
	fs.IntVar(&o.sources, "sources", 0, "loopback source addresses 127.0.0.1… to dial from; 0: one per 25,000 sockets")
	fs.IntVar(&o.dialers, "dialers", 64, "dials in flight, in all")
	fs.IntVar(&o.inflight, "inflight", 64, "publish calls in flight")
	fs.IntVar(&o.batch, "batch", 100, "most events per batch call (publishers batch and go-batch)")
	fs.IntVar(&o.payload, "payload", 128, "bytes of event data")
	fs.DurationVar(&o.ceilP99, "ceiling-p99", 100*time.Millisecond, "ceiling: the p99 a rate must keep")
	fs.IntVar(&o.ceilSteps, "ceiling-steps", 8, "ceiling: most steps")
	fs.Float64Var(&o.ceilMax, "ceiling-max", 200000, "ceiling: highest rate tried")
	fs.StringVar(&o.gatewayBin, "gateway-bin", "bin/gateway", "the gateway binary to start")
	fs.StringVar(&o.baselineBin, "baseline-bin", "bin/baseline", "the baseline binary to start")
	fs.StringVar(&o.redisBin, "redis-server", "redis-server", "the redis-server binary to start")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write the first server's CPU profile while publishing to this file")
	fs.BoolVar(&o.commandStats, "commandstats", false, "report Redis INFO commandstats per event")
	fs.StringVar(&o.commit, "commit", "", "the commit being measured, recorded in the result; default: the tool's own build")
	return gateways, pids
}

// parse reads one run's options from args and getenv and checks them.
func parse(args []string, getenv func(string) string) (options, error) {
	return parseTo(args, getenv, io.Discard)
}

func parseTo(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	gateways, pids := flags(&o, fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return o, o.finish(*gateways, *pids, getenv)
}

// finish fills the defaults that depend on other options and checks them.
func (o *options) finish(gateways, pids string, getenv func(string) string) error {
	for _, g := range strings.Split(gateways, ",") {
		if g = strings.TrimSpace(g); g == "" {
			continue
		}
		u, err := url.Parse(g)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return fmt.Errorf("-gateways: bad URL %q", g)
		}
		if !loopback(u.Hostname()) {
			return fmt.Errorf("-gateways: %s is not a loopback address; load runs against local servers only", u.Hostname())
		}
		o.gateways = append(o.gateways, strings.TrimRight(u.String(), "/"))
	}
	for _, p := range strings.Split(pids, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			return fmt.Errorf("-pids: bad process id %q", p)
		}
		o.pids = append(o.pids, n)
	}
	if o.redisAddr != "" {
		host, _, err := net.SplitHostPort(o.redisAddr)
		if err != nil || !loopback(host) {
			return fmt.Errorf("-redis: want a loopback host:port, got %q", o.redisAddr)
		}
	}
	if len(o.gateways) > 0 {
		o.replicas = len(o.gateways)
		if o.target == "herald" {
			if o.apiKey = getenv("HERALD_API_KEY"); o.apiKey == "" {
				return errors.New("HERALD_API_KEY is not set (needed with -gateways)")
			}
		}
	} else {
		o.apiKey = defaultAPIKey
	}
	if o.users == 0 {
		o.users = o.conns
	}
	if o.stalled < 0 {
		o.stalled = 0
		if o.scenario == "overload" {
			o.stalled = defaultStalled
		}
	}
	if o.workers == 0 {
		o.workers = (o.conns + 14999) / 15000
	}
	if o.sources == 0 {
		o.sources = (o.conns + 24999) / 25000
	}
	switch {
	case !slices.Contains([]string{"idle", "personal", "broadcast", "storm", "ceiling", "overload"}, o.scenario):
		return fmt.Errorf("-scenario: unknown %q", o.scenario)
	case o.stalled > 0 && o.scenario != "overload":
		return errors.New("-stalled: for -scenario overload only")
	case o.memory && (o.target != "herald" || len(o.gateways) > 0 || o.shards > 0 || o.replicas > 1 || strings.HasPrefix(o.publisher, "go")):
		return errors.New("-memory starts one Herald gateway without Redis: not with -target baseline, -gateways, -shards, -replicas > 1 or -publisher go")
	case o.target != "herald" && o.target != "baseline":
		return fmt.Errorf("-target: unknown %q", o.target)
	case o.publisher != "http" && o.publisher != "batch" && o.publisher != "go" && o.publisher != "go-batch":
		return fmt.Errorf("-publisher: unknown %q", o.publisher)
	case strings.HasPrefix(o.publisher, "go") && o.target != "herald":
		return errors.New("-publisher go publishes through Herald's Redis: -target herald only")
	case strings.HasPrefix(o.publisher, "go") && len(o.gateways) > 0 && o.redisAddr == "":
		return errors.New("-publisher go with -gateways needs -redis")
	case o.conns < 1 || o.users < 1 || o.users > o.conns:
		return errors.New("want conns ≥ users ≥ 1")
	case o.replicas < 1 || o.workers < 1 || o.sources < 1 || o.sources > 250 || o.dialers < 1 || o.inflight < 1:
		return errors.New("want replicas, workers, dialers, inflight ≥ 1 and 1 ≤ sources ≤ 250")
	case o.batch < 1 || o.batch > 100:
		return errors.New("-batch: want 1 to 100 (the publish API's limit)")
	case o.rate <= 0 || o.duration <= 0 || o.timeout <= 0 || o.payload < 32:
		return errors.New("want rate > 0, duration > 0, timeout > 0, payload ≥ 32")
	case o.shards < 0 || o.shards > 16:
		return errors.New("-shards: want 0 to 16")
	case o.shards > 0 && (o.target != "herald" || len(o.gateways) > 0):
		return errors.New("-shards starts a Redis Cluster for the Herald replicas the tool starts: not with -target baseline or -gateways")
	case o.workers > o.conns:
		o.workers = o.conns
	}
	return nil
}

// loopback reports whether host names this machine's loopback interface.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
