package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/config"
	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/gateway"
	"github.com/heraldgw/herald/internal/hub"
	"github.com/heraldgw/herald/internal/logging"
	"github.com/heraldgw/herald/internal/metrics"
	"github.com/heraldgw/herald/internal/redisclient"
	"github.com/heraldgw/herald/internal/session"
	"github.com/heraldgw/herald/ratelimit"
	"github.com/heraldgw/herald/web"
)

// run builds the whole gateway from its configuration, serves until ctx is
// done, then drains: it stops accepting, closes sockets with 1012 spread
// over the drain window, and closes Redis last. It prints "listening on
// ADDR" to stdout once it accepts connections.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Load(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil // -h: the flags were shown
	}
	if err != nil {
		return err
	}
	log := logging.New(stderr, cfg.LogLevel).With("node", cfg.Node)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var (
		h         *hub.Hub
		srv       *gateway.Server
		b         broker.Broker
		sessions  session.Store
		rdb       redis.UniversalClient
		connects  ratelimit.Limiter
		publishes gateway.EventLimiter
		slots     gateway.Slots
	)
	m := metrics.New(reg,
		func() float64 { return float64(h.Conns()) },
		func() float64 { return float64(h.Channels()) })
	delivery := metrics.NewDelivery(reg, func() hub.Queued { return h.Queued() })
	// The broker delivers into the hub, which subscribes through the
	// broker: both are built before either is used.
	deliver := func(channel, id, owner string, frame []byte) {
		m.EventsDelivered.Add(float64(h.Broadcast(channel, id, owner, frame)))
	}
	windowCfg := ratelimit.SlidingWindowConfig{Limit: cfg.ConnectLimit, Window: cfg.ConnectWindow}
	bucketCfg := ratelimit.TokenBucketConfig{Rate: cfg.PublishRate, Burst: cfg.PublishBurst}
	slotsCfg := ratelimit.ConcurrencyConfig{
		Prefix: cfg.KeyPrefix, Replica: cfg.Node,
		OnLost: func(l ratelimit.Lease) { srv.SlotLost(l) }, // from the limiter's Run, which srv runs
	}
	if cfg.Dev && cfg.RedisURL != "" { // allowed by HERALD_DEV_FORCE only
		log.Warn("dev mode with a shared Redis (HERALD_DEV_FORCE): anyone can log in as anyone, " +
			"on every replica sharing this Redis; never with real users' sessions")
	}
	if cfg.RedisURL == "" {
		log.Info("herald starting single-node, in memory: no REDIS_URL, so nothing is shared with other replicas",
			"addr", cfg.Addr, "dev", cfg.Dev)
		b = broker.NewMemory(deliver, broker.MemoryConfig{HistorySize: cfg.HistorySize, HistoryTTL: cfg.HistoryTTL, RecordTTL: cfg.RecordTTL})
		sessions = session.NewMemory(nil)
		connects, err = ratelimit.NewMemorySlidingWindow(windowCfg, nil)
		if err == nil {
			publishes, err = ratelimit.NewMemoryTokenBucket(bucketCfg, nil)
		}
		if err == nil {
			slots, err = ratelimit.NewMemoryConcurrency(slotsCfg)
		}
	} else {
		if rdb, err = redisclient.New(cfg.RedisMode, cfg.RedisURL); err != nil {
			return fmt.Errorf("REDIS_URL: %w", err)
		}
		// go-redis logs through one process-wide logger: with several run()s
		// in one process (tests), the last to start gets every line.
		redis.SetLogger(logging.RedisLogger(log))
		log.Info("herald starting with Redis", "redis", redisclient.Describe(cfg.RedisMode, cfg.RedisURL),
			"mode", cfg.RedisMode, "addr", cfg.Addr, "dev", cfg.Dev)
		names := events.Names{Prefix: cfg.KeyPrefix}
		rlog := events.NewRedisLog(rdb, names, events.LogConfig{
			HistorySize: int64(cfg.HistorySize), HistoryTTL: cfg.HistoryTTL, RecordTTL: cfg.RecordTTL,
			Sharded:     cfg.RedisMode == redisclient.Cluster,
			ReplicaAcks: cfg.ReplicaAcks, ReplicaTimeout: cfg.ReplicaTimeout,
			OnBatch: metrics.NewPublish(reg).Batch,
		})
		warnShortOfReplicas(ctx, rdb, cfg.ReplicaAcks, log)
		rs := session.NewRedis(rdb, names, log, nil)
		rb := broker.NewRedis(rdb, rlog, names, deliver, log, broker.RedisOptions{
			Classic: true,
			OnGap:   func(channel string) { srv.Gap(channel) },
			// Under Sentinel, pub/sub connections must follow the primary:
			// the broker's and the revocation watch's.
			WatchPrimary:    cfg.RedisMode == redisclient.Sentinel,
			OnPrimaryChange: rs.Resubscribe,
		})
		metrics.RegisterBroker(reg, rb.Stats)
		b = rb
		sessions = rs
		connects, err = ratelimit.NewSlidingWindow(rdb, windowCfg)
		if err == nil {
			publishes, err = publishLimiter(rdb, bucketCfg, cfg.PublishLease)
		}
		if err == nil {
			slots, err = ratelimit.NewConcurrency(rdb, slotsCfg, log)
		}
	}
	h = hub.New(hub.Config{
		OnClose: m.Closed,
		OnWrite: delivery.Written,
		OnEvict: func(c *hub.Conn, channel string) { srv.Evicted(c, channel) },
	}, b, log)
	if err != nil {
		b.Close()
		closeRedis(rdb)
		return fmt.Errorf("limits: %w", err)
	}

	guards := metrics.NewGuards(reg, func() float64 { return float64(srv.HTTPConns()) })
	srv = gateway.New(gateway.Deps{
		Config: cfg, Hub: h, Broker: b, Sessions: sessions,
		Metrics: m, Guards: guards, Gatherer: reg, Log: log, Web: web.FS(),
		ConnectLimiter: connects, PublishLimiter: publishes, Slots: slots,
	})
	// No TCP keep-alive probes: sockets are pinged (HERALD_PING_INTERVAL),
	// SSE streams send heartbeats and idle HTTP connections end after
	// IdleTimeout, so the probes would find nothing those miss; and
	// enabling them costs four setsockopt calls per accepted connection
	// (3 % of the gateway's CPU in a connect storm).
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(ctx, "tcp", cfg.Addr)
	if err != nil {
		b.Close()
		closeRedis(rdb)
		return fmt.Errorf("HERALD_ADDR: listen: %w", err)
	}
	var (
		debug *http.Server // profiles, when HERALD_DEBUG_ADDR is set
		dln   net.Listener
	)
	if cfg.DebugAddr != "" {
		if dln, err = net.Listen("tcp", cfg.DebugAddr); err != nil {
			ln.Close()
			b.Close()
			closeRedis(rdb)
			return fmt.Errorf("HERALD_DEBUG_ADDR: listen: %w", err)
		}
		debug = &http.Server{Handler: debugHandler(), ReadHeaderTimeout: 5 * time.Second}
	}
	hs := &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		MaxHeaderBytes:    16 << 10,
		IdleTimeout:       2 * time.Minute,
		ConnState:         srv.ConnState,
		ConnContext:       srv.ConnContext,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	bg, stopBg := context.WithCancel(context.Background())
	g, gctx := errgroup.WithContext(bg)
	g.Go(func() error { return srv.Run(gctx) })
	g.Go(func() error {
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	})
	if debug != nil {
		g.Go(func() error { return serveDebug(debug, dln, log) })
	}
	log.Info("listening", "addr", ln.Addr().String())
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
	if cfg.Dev {
		fmt.Fprintf(stdout, "demo page: %s\n", pageURL(ln.Addr()))
	}

	select {
	case <-ctx.Done():
	case <-gctx.Done(): // a loop failed: shut down the same way
	}

	// Shutdown: stop accepting, drain connections, stop loops, close Redis
	// last. http.Server.Shutdown closes the listener at once, then waits
	// for the requests in progress, SSE streams among them, which only the
	// drain ends: the two run together.
	log.Info("draining", "window", cfg.DrainTimeout.String(), "connections", h.Conns())
	dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout+5*time.Second)
	shutdown := make(chan error, 1)
	go func() { shutdown <- hs.Shutdown(dctx) }()
	srv.Drain(dctx)
	if err := <-shutdown; err != nil {
		log.Warn("http shutdown", "err", err)
	}
	if debug != nil {
		debug.Close() // a profile being taken is cut short
	}
	cancel()
	stopBg()
	err = g.Wait()
	b.Close() // no more deliveries into the hub
	h.Close()
	closeRedis(rdb)
	log.Info("stopped")
	return err
}

// debugHandler serves net/http/pprof (HERALD_DEBUG_ADDR, loopback only).
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// serveDebug serves profiles on ln until ds is closed.
func serveDebug(ds *http.Server, ln net.Listener, log *slog.Logger) error {
	log.Info("profiles served", "addr", ln.Addr().String(), "path", "/debug/pprof/")
	if err := ds.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("debug serve: %w", err)
	}
	return nil
}

// pageURL is the address to open in a browser for a listener on addr: a
// listener on every interface is reached through localhost.
func pageURL(addr net.Addr) string {
	host, port, _ := net.SplitHostPort(addr.String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}

// warnShortOfReplicas says at start which Redis primaries cannot confirm
// publishes yet: there they fail until enough replicas are in sync.
func warnShortOfReplicas(ctx context.Context, rdb redis.UniversalClient, acks int, log *slog.Logger) {
	if acks <= 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	short, err := redisclient.ShortOfReplicas(cctx, rdb, acks)
	switch {
	case err != nil:
		log.Warn("could not count the Redis replicas that confirm publishes", "err", err)
	case len(short) > 0:
		log.Warn("Redis primaries with fewer replicas in sync than HERALD_REDIS_REPLICA_ACKS: publishes to them fail until they have enough (set HERALD_REDIS_REPLICA_ACKS=0 to publish without waiting for replicas)",
			"want", acks, "primaries", short)
	}
}

func closeRedis(rdb redis.UniversalClient) {
	if rdb != nil {
		rdb.Close()
	}
}

// publishLimiter is the publish budget of API keys in Redis: the shared
// token bucket, spent through leases of lease (0: every publish decided in
// Redis).
func publishLimiter(rdb redis.UniversalClient, cfg ratelimit.TokenBucketConfig, lease time.Duration) (gateway.EventLimiter, error) {
	b, err := ratelimit.NewTokenBucket(rdb, cfg)
	switch {
	case err != nil:
		return nil, err
	case lease == 0:
		return b, nil
	}
	return ratelimit.NewTokenLease(b, lease, nil)
}
