package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
)

// run dispatches the subcommands: `worker` (internal), `bench`, `report`,
// and otherwise one run with the given flags.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "worker":
			return runWorker(ctx, stdin, stdout, getenv(workerProfileEnv))
		case "bench":
			return runBench(ctx, args[1:], getenv, stdout, stderr)
		case "report":
			return runReport(args[1:], stdin, stdout)
		}
	}
	o, err := parseTo(args, getenv, stderr)
	if err != nil {
		return err
	}
	res, err := runOnce(ctx, o, stderr)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(res.rounded())
}

// result is one run's JSON line. Latencies are publish call → frame read
// by the client, in milliseconds.
type result struct {
	Scenario       string             `json:"scenario"`
	Target         string             `json:"target"`
	Replicas       int                `json:"replicas"`
	Publisher      string             `json:"publisher"`
	Conns          int                `json:"conns"`
	Connected      int64              `json:"connected"`
	Users          int                `json:"users"`
	Rate           float64            `json:"rate"` // asked for, events/s
	DurationS      float64            `json:"duration_s"`
	Events         int64              `json:"events"` // accepted publishes
	EventsPerS     float64            `json:"events_per_s"`
	Expected       int64              `json:"expected"` // deliveries the accepted events owe
	Deliveries     int64              `json:"deliveries"`
	DeliveriesPerS float64            `json:"deliveries_per_s"`
	P50            float64            `json:"p50_ms"`
	P99            float64            `json:"p99_ms"`
	P999           float64            `json:"p999_ms"`
	Max            float64            `json:"max_ms"`
	Lost           int64              `json:"lost"`
	Dups           int64              `json:"dups"`
	ConnectsPerS   float64            `json:"connects_per_s"`
	ConnectP50     float64            `json:"connect_p50_ms"` // dial → welcomed (and subscribed)
	ConnectP99     float64            `json:"connect_p99_ms"`
	SessionsPerS   float64            `json:"sessions_per_s,omitempty"`     // POST /api/sessions, Herald
	RSSPerConn     int64              `json:"rss_per_conn_bytes"`           // server RSS delta / sockets, after -settle
	ServerCPU      float64            `json:"server_cpu_pct"`               // % of one core, all server processes
	RedisCPU       float64            `json:"redis_cpu_pct"`                // % of one core, every Redis node together
	Shards         int                `json:"shards,omitempty"`             // masters of the Redis Cluster; 0: one redis-server
	Memory         bool               `json:"memory,omitempty"`             // Herald without Redis (-memory)
	RedisNodeCPU   []float64          `json:"redis_node_cpu_pct,omitempty"` // with -shards: each node's share, % of one core
	ClientCPU      float64            `json:"client_cpu_pct"`               // the load tool and its workers
	Ceiling        float64            `json:"ceiling_events_per_s,omitempty"`
	Steps          []step             `json:"steps,omitempty"`
	RedisCommands  map[string]cmdStat `json:"redis_commands,omitempty"` // per event, with -commandstats
	Errors         int64              `json:"errors"`                   // failed connects + failed publishes + sockets the server closed
	ErrorSamples   []string           `json:"error_samples,omitempty"`

	// Publish calls: request sent → answer read, in milliseconds.
	PublishP50 float64 `json:"publish_p50_ms,omitempty"`
	PublishP99 float64 `json:"publish_p99_ms,omitempty"`
	PublishMax float64 `json:"publish_max_ms,omitempty"`
	// Server memory while publishing and draining, sampled every 100 ms
	// (RSS of all server processes; Redis not included).
	RSSStart int64     `json:"rss_start_bytes,omitempty"` // when publishing began
	RSSPeak  int64     `json:"rss_peak_bytes,omitempty"`
	RSSEnd   int64     `json:"rss_end_bytes,omitempty"` // after the drain
	RSSMB    []float64 `json:"rss_mb,omitempty"`        // one sample per second, MB
	// TCPMemPeak is the growth of the kernel's TCP buffer memory
	// (/proc/net/sockstat) while publishing, peak minus start: where a
	// backlog goes once the server wrote it. Machine-wide: other processes
	// count too.
	TCPMemPeak int64 `json:"tcp_mem_peak_bytes,omitempty"`
	// Sockets the server ended after they were ready, by the close code
	// the client read (1006: cut without a close frame); Closed is also in
	// Errors. Stalled sockets (overload) count apart, not in Errors.
	Closed            int64         `json:"closed,omitempty"`
	CloseCodes        map[int]int64 `json:"close_codes,omitempty"`
	Stalled           int           `json:"stalled,omitempty"` // asked for
	StalledConnected  int64         `json:"stalled_connected,omitempty"`
	StalledClosed     int64         `json:"stalled_closed,omitempty"`
	StalledCloseCodes map[int]int64 `json:"stalled_close_codes,omitempty"`
	// ServerCloseCodes are the closes Herald counted while publishing and
	// draining (herald_closes_total), healthy and stalled sockets together:
	// the code it meant, also when the close frame never reached a peer
	// that was not reading.
	ServerCloseCodes map[int]int64 `json:"server_close_codes,omitempty"`
	LoadAvg          float64       `json:"loadavg"` // the machine's 1-minute load average at the start
	Commit           string        `json:"commit,omitempty"`
	Time             string        `json:"time"`
}

// rounded returns r with its figures rounded to what they can tell.
func (r result) rounded() result {
	for _, f := range []*float64{&r.EventsPerS, &r.DeliveriesPerS, &r.ConnectsPerS, &r.SessionsPerS, &r.Ceiling} {
		*f = math.Round(*f)
	}
	for _, f := range []*float64{&r.P50, &r.P99, &r.P999, &r.Max, &r.ConnectP50, &r.ConnectP99, &r.ServerCPU, &r.RedisCPU, &r.ClientCPU,
		&r.PublishP50, &r.PublishP99, &r.PublishMax} {
		*f = math.Round(*f*100) / 100
	}
	for i := range r.Steps {
		r.Steps[i].EventsPerS = math.Round(r.Steps[i].EventsPerS)
	}
	return r
}

// step is one rate tried by the ceiling search.
type step struct {
	Rate       float64 `json:"rate"`
	EventsPerS float64 `json:"events_per_s"`
	P99        float64 `json:"p99_ms"`
	Lost       int64   `json:"lost"`
	Errors     int64   `json:"errors"`
	OK         bool    `json:"ok"`
}

// cmdStat is one Redis command's cost per published event.
type cmdStat struct {
	Calls float64 `json:"calls"`
	Usec  float64 `json:"usec"`
}

// session is one run in progress: its servers, workers and counters.
type session struct {
	o       options
	srv     *servers
	workers []*workerProc
	rdb     redis.UniversalClient // the servers' Redis (a cluster client with -shards), nil for the baseline
	nodes   []*redis.Client       // each Redis node, for CPU and commandstats
	stderr  io.Writer
	label   atomic.Pointer[string]        // what the progress line says
	shown   atomic.Pointer[[]*workerProc] // the workers, for the progress line
	res     result
	perCh   []int64 // ready sockets per channel
	nextEv  int64   // the next event's number
}

// runOnce runs one scenario against one target and returns its result.
func runOnce(ctx context.Context, o options, stderr io.Writer) (res result, err error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	s := &session{o: o, stderr: stderr}
	s.res = result{Scenario: o.scenario, Target: o.target, Replicas: o.replicas, Shards: o.shards, Memory: o.memory, Publisher: o.publisher,
		Conns: o.conns, Users: o.users, Stalled: o.stalled, LoadAvg: loadAverage(), Commit: cmp.Or(o.commit, commit()), Time: time.Now().UTC().Format(time.RFC3339)}
	if o.scenario != "idle" && o.scenario != "storm" {
		s.res.Rate, s.res.DurationS = o.rate, o.duration.Seconds()
	}
	s.setLabel("starting servers")

	if s.srv, err = startServers(ctx, o, stderr); err != nil {
		return res, err
	}
	defer func() {
		if err != nil && s.srv.dir != "" {
			fmt.Fprintf(stderr, "load: server logs kept in %s\n", s.srv.dir)
		}
		s.srv.stop(err != nil)
	}()
	if len(s.srv.nodes) > 0 {
		s.rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: s.srv.nodes, PoolSize: o.inflight + 4})
		defer s.rdb.Close()
		for _, n := range s.srv.nodes {
			c := redis.NewClient(&redis.Options{Addr: n})
			defer c.Close()
			s.nodes = append(s.nodes, c)
		}
	} else if s.srv.redis != "" {
		c := redis.NewClient(&redis.Options{Addr: s.srv.redis, PoolSize: o.inflight + 4})
		defer c.Close()
		s.rdb, s.nodes = c, []*redis.Client{c}
	}

	var bg sync.WaitGroup // the progress printer
	pctx, stopProgress := context.WithCancel(ctx)
	defer bg.Wait()
	defer stopProgress()
	bg.Go(func() { s.printProgress(pctx) })

	defer func() { stopWorkers(s.workers) }() // connect starts them
	if err := s.connect(ctx); err != nil {
		return res, err
	}

	switch o.scenario {
	case "idle":
		s.setLabel("idle")
		err = s.measureCPU(ctx, func() error { return sleep(ctx, o.duration) })
	case "storm":
		// The connect phase was the measurement.
	case "personal", "broadcast", "overload":
		err = s.phase(ctx, o.rate, o.duration)
	case "ceiling":
		err = s.ceiling(ctx)
	}
	if err != nil {
		return res, err
	}
	return s.res, nil
}

// broadcastShape reports whether every socket is on one public: channel.
func (s *session) broadcastShape() bool {
	return s.o.scenario == "broadcast" || s.o.scenario == "overload"
}

// names returns the channel of each channel index: users' personal channels
// or the one broadcast channel.
func (s *session) names() func(int) string {
	if s.broadcastShape() {
		return func(int) string { return "public:load" }
	}
	return func(ch int) string { return "user:" + userName(ch) }
}

func userName(u int) string { return fmt.Sprintf("load-%d", u) }

// channelOf is the channel index of socket i.
func (s *session) channelOf(i int) int {
	if s.broadcastShape() {
		return 0
	}
	return i % s.o.users
}

// connect creates the sessions (Herald), starts the workers with their
// sockets, waits until every socket is ready or failed, and reads memory.
func (s *session) connect(ctx context.Context) error {
	o := s.o
	tokens := make([]string, o.users)
	if o.target == "herald" {
		s.setLabel("creating sessions")
		start := time.Now()
		var err error
		if tokens, err = createSessions(ctx, s.srv.urls, o.apiKey, o.users); err != nil {
			return err
		}
		s.res.SessionsPerS = float64(o.users) / time.Since(start).Seconds()
	}

	jobs := make([]job, o.workers)
	for w := range jobs {
		jobs[w].Dialers = max(1, o.dialers/o.workers)
	}
	// Stalled sockets come after the healthy ones and share their users.
	for i := range o.conns + o.stalled {
		u := i % o.users
		base := "ws" + strings.TrimPrefix(s.srv.urls[i%len(s.srv.urls)], "http") + "/ws"
		c := connSpec{I: i, URL: base, Token: tokens[u], Src: fmt.Sprintf("127.0.0.%d", 1+i%o.sources), Stall: i >= o.conns}
		if o.target == "baseline" {
			c.URL += "?user=" + userName(u)
		}
		if s.broadcastShape() {
			c.Sub = "public:load"
		}
		jobs[i%o.workers].Conns = append(jobs[i%o.workers].Conns, c)
	}

	s.setLabel("connecting")
	rssBefore := sumRSS(s.srv.pids)
	start := time.Now()
	cpu0, self0, redis0 := sumCPU(s.srv.pids), sumCPU([]int{os.Getpid()}), s.redisCPU(ctx)
	ws, err := startWorkers(jobs, s.stderr)
	if err != nil {
		return err
	}
	s.workers = ws
	s.shown.Store(&ws)
	ready, err := await(ctx, ws)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	took := time.Since(start)
	failed := map[int]bool{}
	var connectHist histSnap
	for _, m := range ready {
		s.res.Connected += m.Connected
		s.res.StalledConnected += m.StalledConnected
		for _, i := range m.Failed {
			failed[i] = true
		}
		s.noteErrors(m.Errors)
		if m.Hist != nil {
			connectHist.add(*m.Hist)
		}
	}
	s.res.Errors += int64(len(failed))
	if s.res.Connected == 0 {
		return fmt.Errorf("no socket connected: %v", s.res.ErrorSamples)
	}
	s.res.ConnectsPerS = float64(s.res.Connected) / took.Seconds()
	s.res.ConnectP50, s.res.ConnectP99 = connectHist.quantile(0.5), connectHist.quantile(0.99)
	if o.scenario == "storm" {
		s.res.ServerCPU = 100 * (sumCPU(s.srv.pids) - cpu0) / took.Seconds()
		s.res.ClientCPU = 100 * (sumCPU(workerPIDs(ws)) + sumCPU([]int{os.Getpid()}) - self0) / took.Seconds()
		if s.rdb != nil {
			s.res.RedisCPU = 100 * (s.redisCPU(ctx) - redis0) / took.Seconds()
		}
	}
	s.perCh = make([]int64, o.users)
	for i := range o.conns {
		if !failed[i] {
			s.perCh[s.channelOf(i)]++
		}
	}

	s.setLabel("settling")
	if err := sleep(ctx, o.settle); err != nil {
		return err
	}
	if rssBefore > 0 {
		s.res.RSSPerConn = (sumRSS(s.srv.pids) - rssBefore) / s.res.Connected
	}
	return nil
}

// phase publishes at rate for dur, waits for the deliveries, and records
// the figures in s.res.
func (s *session) phase(ctx context.Context, rate float64, dur time.Duration) error {
	o := s.o
	first, err := snap(ctx, s.workers) // starts the latency histogram afresh
	if err != nil {
		return err
	}
	var before workerMsg
	for _, m := range first {
		before.Delivered += m.Delivered
		before.Dups += m.Dups
		before.Closed += m.Closed
		before.StalledClosed += m.StalledClosed
	}
	closes0 := s.serverCloses(ctx)
	if o.commandStats && s.rdb != nil {
		for _, n := range s.nodes {
			n.ConfigResetStat(ctx)
		}
	}
	pub, err := s.publisher()
	if err != nil {
		return err
	}
	channels := len(s.perCh)
	eventOf := func(k int64) event { return event{ch: int(k % int64(channels)), seq: k / int64(channels)} }
	if s.broadcastShape() {
		channels = 1
		eventOf = func(k int64) event { return event{seq: k} }
	}

	var pr pumpResult
	var expected int64
	var mem memSamples
	err = s.measureCPU(ctx, func() error {
		var bg sync.WaitGroup
		defer bg.Wait()
		if o.cpuProfile != "" && s.srv.debug[0] != "" {
			bg.Go(func() { s.profile(ctx, s.srv.debug[0], dur) })
		}
		mctx, stopMem := context.WithCancel(ctx)
		defer stopMem() // before bg.Wait: the samples end with the drain
		bg.Go(func() { mem = sampleMemory(mctx, s.srv.pids) })
		s.setLabel(fmt.Sprintf("publishing %.0f/s", rate))
		pr = pump(ctx, pub, rate, dur, o.inflight, s.batchSize(), channels, &s.nextEv, eventOf)
		for ch, n := range pr.accepted {
			if s.broadcastShape() {
				expected += n * s.res.Connected
			} else {
				expected += n * s.perCh[ch]
			}
		}
		s.setLabel("draining")
		return s.awaitDeliveries(ctx, before.Delivered+expected)
	})
	if err != nil {
		return err
	}
	if o.stalled > 0 {
		// The stalled sockets read again, to learn how they were closed.
		if err := s.resumeStalled(ctx); err != nil {
			return err
		}
	}
	after, err := snap(ctx, s.workers)
	if err != nil {
		return err
	}
	var h histSnap
	var delivered, dups, closed, stalledClosed int64
	codes, stalledCodes := map[int]int64{}, map[int]int64{}
	for _, m := range after {
		delivered += m.Delivered
		dups += m.Dups
		closed += m.Closed
		stalledClosed += m.StalledClosed
		addCounts(codes, m.Codes)
		addCounts(stalledCodes, m.StalledCodes)
		s.noteErrors(m.Errors)
		if m.Hist != nil {
			h.add(*m.Hist)
		}
	}
	for _, m := range first {
		subCounts(codes, m.Codes)
		subCounts(stalledCodes, m.StalledCodes)
	}
	r := &s.res
	r.Events, r.EventsPerS = pr.events, float64(pr.events)/pr.elapsed.Seconds()
	r.Expected, r.Deliveries = expected, delivered-before.Delivered
	r.DeliveriesPerS = float64(r.Deliveries) / pr.elapsed.Seconds()
	r.Dups = dups - before.Dups
	r.Lost = max(0, expected-r.Deliveries)
	r.P50, r.P99, r.P999, r.Max = h.quantile(0.5), h.quantile(0.99), h.quantile(0.999), float64(h.Max)/1000
	r.Errors += pr.failed + (closed - before.Closed)
	s.noteErrors(pr.errs)
	r.PublishP50, r.PublishP99, r.PublishMax = pr.calls.quantile(0.5), pr.calls.quantile(0.99), float64(pr.calls.Max)/1000
	r.RSSStart, r.RSSPeak, r.RSSEnd, r.RSSMB, r.TCPMemPeak = mem.start, mem.peak, mem.end, mem.perSecond, mem.tcpPeak
	r.Closed, r.CloseCodes = closed-before.Closed, nonZero(codes)
	r.StalledClosed, r.StalledCloseCodes = stalledClosed-before.StalledClosed, nonZero(stalledCodes)
	if closes0 != nil {
		r.ServerCloseCodes = nonZero(subCounts(s.serverCloses(ctx), closes0))
	}
	if o.commandStats && s.rdb != nil && pr.events > 0 {
		r.RedisCommands = commandStats(ctx, s.nodes, pr.events)
	}
	return nil
}

// ceiling searches the highest rate whose p99 stays within -ceiling-p99,
// with nothing lost or refused and the rate really achieved: up by half
// while a step passes, then halfway between the best pass and the first
// failure. A failed step is tried once more before the rate counts as
// failed.
func (s *session) ceiling(ctx context.Context) error {
	o := s.o
	var best result
	lo, hi := 0.0, 0.0
	rate := o.rate
	retried := false
	for range o.ceilSteps {
		errsBefore := s.res.Errors
		if err := s.phase(ctx, rate, o.duration); err != nil {
			return err
		}
		r := s.res
		st := step{Rate: rate, EventsPerS: r.EventsPerS, P99: r.P99, Lost: r.Lost, Errors: r.Errors - errsBefore}
		st.OK = r.EventsPerS >= 0.95*rate && r.P99 <= float64(o.ceilP99.Milliseconds()) && st.Lost == 0 && st.Errors == 0
		fmt.Fprintf(s.stderr, "load: ceiling step %.0f/s: achieved %.0f/s, p99 %.1f ms, lost %d, errors %d: ok %v\n",
			rate, st.EventsPerS, st.P99, st.Lost, st.Errors, st.OK)
		best.Steps = append(best.Steps, st)
		if !st.OK && !retried {
			// One bad moment of a shared machine fails a short step: a
			// rate fails only when it fails twice in a row.
			retried = true
			continue
		}
		retried = false
		if st.OK {
			steps := best.Steps
			lo, best = rate, r
			best.Steps = steps
		} else {
			hi = rate
		}
		if hi == 0 { // no failure yet: go up
			if rate >= o.ceilMax {
				break
			}
			rate = min(rate*1.5, o.ceilMax)
			continue
		}
		if hi-lo < 0.05*hi {
			break
		}
		rate = (lo + hi) / 2
	}
	if lo == 0 { // nothing passed: report the last step as it was
		steps := best.Steps
		best = s.res
		best.Steps = steps
	}
	best.Ceiling = lo
	best.Rate = lo
	s.res = best
	return nil
}

// awaitDeliveries waits until the workers have received want frames in
// all, or nothing more arrived for a second, or -drain passed.
func (s *session) awaitDeliveries(ctx context.Context, want int64) error {
	deadline := time.Now().Add(s.o.drain)
	last, lastChange := int64(-1), time.Now()
	for time.Now().Before(deadline) {
		got := progress(s.workers).Delivered
		if got >= want {
			break
		}
		if got != last {
			last, lastChange = got, time.Now()
		} else if time.Since(lastChange) > time.Second {
			break
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return sleep(ctx, 300*time.Millisecond) // progress lines lag by up to 250 ms
}

// measureCPU runs fn and records the servers', Redis's and the tool's CPU
// use while it ran.
func (s *session) measureCPU(ctx context.Context, fn func() error) error {
	client := append(workerPIDs(s.workers), os.Getpid())
	srv0, cli0, nodes0 := sumCPU(s.srv.pids), sumCPU(client), s.redisNodeCPU(ctx)
	start := time.Now()
	if err := fn(); err != nil {
		return err
	}
	wall := time.Since(start).Seconds()
	s.res.ServerCPU = 100 * (sumCPU(s.srv.pids) - srv0) / wall
	s.res.ClientCPU = 100 * (sumCPU(client) - cli0) / wall
	if s.rdb != nil {
		var nodes []float64
		s.res.RedisCPU = 0
		for i, c := range s.redisNodeCPU(ctx) {
			pct := math.Round(100*(c-nodes0[i])/wall*100) / 100
			s.res.RedisCPU += pct
			nodes = append(nodes, pct)
		}
		if s.o.shards > 0 {
			s.res.RedisNodeCPU = nodes
		}
	}
	return nil
}

// redisCPU returns the CPU seconds Redis has used (INFO cpu), every node
// together, 0 without it.
func (s *session) redisCPU(ctx context.Context) float64 {
	total := 0.0
	for _, c := range s.redisNodeCPU(ctx) {
		total += c
	}
	return total
}

// redisNodeCPU returns each Redis node's CPU seconds (INFO cpu).
func (s *session) redisNodeCPU(ctx context.Context) []float64 {
	out := make([]float64, len(s.nodes))
	for i, n := range s.nodes {
		info, err := n.Info(ctx, "cpu").Result()
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(info, "\n") {
			k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
			if k == "used_cpu_sys" || k == "used_cpu_user" {
				var f float64
				fmt.Sscan(v, &f)
				out[i] += f
			}
		}
	}
	return out
}

// commandStats reads INFO commandstats of every node and divides the sums
// by events. Commands a script runs are counted on their own lines as well
// as in the script's.
func commandStats(ctx context.Context, nodes []*redis.Client, events int64) map[string]cmdStat {
	var infos []string
	for _, n := range nodes {
		info, err := n.Info(ctx, "commandstats").Result()
		if err != nil {
			return nil
		}
		infos = append(infos, info)
	}
	sums := map[string][2]float64{}
	for line := range strings.SplitSeq(strings.Join(infos, "\n"), "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd {
			continue
		}
		var calls, usec float64
		for kv := range strings.SplitSeq(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "calls":
				fmt.Sscan(v, &calls)
			case "usec":
				fmt.Sscan(v, &usec)
			}
		}
		sum := sums[name]
		sums[name] = [2]float64{sum[0] + calls, sum[1] + usec}
	}
	out := map[string]cmdStat{}
	for name, sum := range sums {
		out[name] = cmdStat{Calls: round3(sum[0] / float64(events)), Usec: round3(sum[1] / float64(events))}
	}
	return out
}

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

// publisher builds the publisher that -publisher names.
func (s *session) publisher() (publisher, error) {
	o := s.o
	if strings.HasPrefix(o.publisher, "go") {
		return &goPublisher{pub: herald.NewRedisPublisher(s.rdb, herald.RedisConfig{}), names: s.names(), payload: o.payload}, nil
	}
	tr := &http.Transport{MaxIdleConnsPerHost: o.inflight, MaxIdleConns: o.inflight * len(s.srv.urls)}
	return &httpPublisher{
		client: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		urls:   s.srv.urls, toAll: o.target == "baseline", batch: o.publisher == "batch",
		key: o.apiKey, names: s.names(), payload: o.payload,
	}, nil
}

func (s *session) batchSize() int {
	if s.o.publisher == "batch" || s.o.publisher == "go-batch" {
		return s.o.batch
	}
	return 1
}

// profile saves the CPU profile of the server at base while publishing.
func (s *session) profile(ctx context.Context, base string, dur time.Duration) {
	secs := max(1, int(dur.Seconds()))
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, secs), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(s.stderr, "load: cpu profile: %v\n", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(s.o.cpuProfile)
	if err != nil {
		fmt.Fprintf(s.stderr, "load: cpu profile: %v\n", err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		fmt.Fprintf(s.stderr, "load: cpu profile: %v\n", err)
	}
}

func (s *session) noteErrors(errs []string) {
	for _, e := range errs {
		if len(s.res.ErrorSamples) < maxErrors {
			s.res.ErrorSamples = append(s.res.ErrorSamples, e)
		}
	}
}

func (s *session) setLabel(l string) { s.label.Store(&l) }

// printProgress writes a progress line to stderr every second.
func (s *session) printProgress(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	start := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var p workerMsg
		if ws := s.shown.Load(); ws != nil {
			p = progress(*ws)
		}
		stalled := ""
		if s.o.stalled > 0 {
			stalled = fmt.Sprintf("  stalled %d/%d closed %d", p.StalledConnected, s.o.stalled, p.StalledClosed)
		}
		fmt.Fprintf(s.stderr, "load: %s %s %3.0fs  %s  sockets %d/%d  delivered %d  dups %d  closed %d%s\n",
			s.o.target, s.o.scenario, time.Since(start).Seconds(), *s.label.Load(), p.Connected, s.o.conns, p.Delivered, p.Dups, p.Closed, stalled)
	}
}

// createSessions makes one session per user through POST /api/sessions,
// spread over the replicas, a few at a time.
func createSessions(ctx context.Context, urls []string, key string, users int) ([]string, error) {
	tokens := make([]string, users)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := atomic.Int64{}
	for range 32 {
		wg.Go(func() {
			for {
				u := int(next.Add(1) - 1)
				if u >= users || ctx.Err() != nil {
					return
				}
				tok, err := createSession(ctx, client, urls[u%len(urls)], key, userName(u))
				if err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
					return
				}
				tokens[u] = tok
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return tokens, first
}

func createSession(ctx context.Context, client *http.Client, base, key, user string) (string, error) {
	body := fmt.Sprintf(`{"userId":%q,"ttl":3600}`, user)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/sessions", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
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

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// commit is the VCS revision the tool was built from ("…-dirty" with
// uncommitted changes), when the build recorded it.
func commit() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return ""
	}
	return rev[:min(12, len(rev))] + dirty
}
