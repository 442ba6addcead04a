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
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
	"github.com/heraldgw/herald/internal/jobs"
)

// publishTimeout bounds announcing a finished job, which goes on after a
// shutdown began: a rendered result should not be thrown away.
const publishTimeout = 5 * time.Second

// runWorker is "worker run": consume the job stream until ctx is done.
func runWorker(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	rf := addRedisFlags(fs)
	pf := addPublishFlags(fs)
	var cfg jobs.ConsumerConfig
	fs.StringVar(&cfg.Group, "group", "workers", "consumer group shared by all workers")
	fs.StringVar(&cfg.Name, "name", "", "this worker's consumer name, stable across restarts (default hostname-pid)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 1, "jobs processed at once")
	fs.DurationVar(&cfg.ClaimAfter, "claim-after", 30*time.Second, "take over a job another worker left unacknowledged this long")
	fs.DurationVar(&cfg.Block, "block", 2*time.Second, "longest wait for new jobs per read; bounds shutdown time")
	work := fs.Duration("work", 500*time.Millisecond, "time one (simulated) effect takes to render, without --catalog")
	var cf catalogFlags
	fs.StringVar(&cf.source, "catalog", "", "effect catalog, a file path or http(s) URL: a JSON list of effect definitions; jobs of other kinds are dropped, and each takes its definition's durationMs")
	fs.DurationVar(&cf.fresh, "catalog-fresh", 30*time.Second, "how long a loaded catalog is used as it is")
	fs.DurationVar(&cf.stale, "catalog-stale", 5*time.Minute, "how long after --catalog-fresh it is still used while it is reloaded in the background")
	fs.DurationVar(&cf.check, "catalog-check", 10*time.Second, "how often the catalog source is read to notice a change sooner; 0: never")
	metricsAddr := fs.String("metrics-addr", "", "serve Prometheus metrics (the catalog cache's counters, Go runtime) at http://ADDR/metrics; empty: off")
	resultURL := fs.String("result-url", "/dev/results/{effect}.svg", "where a job's result is, {effect} standing for its userEffectId; the default is the picture a gateway in dev mode (HERALD_DEV) draws, which the demo page shows")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if cfg.Concurrency < 1 || cfg.ClaimAfter <= 0 || cfg.Block <= 0 || *work < 0 {
		return fmt.Errorf("%w: run: --concurrency, --claim-after and --block must be positive, --work not negative", errUsage)
	}
	if !strings.Contains(*resultURL, "{effect}") {
		return fmt.Errorf("%w: run: --result-url %q has no {effect}: every job's result would be at the same place", errUsage, *resultURL)
	}
	if cf.fresh <= 0 || cf.stale <= 0 || cf.check < 0 {
		return fmt.Errorf("%w: run: --catalog-fresh and --catalog-stale must be positive, --catalog-check not negative", errUsage)
	}
	if cfg.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			host = "worker"
		}
		cfg.Name = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if err := rf.resolve(getenv); err != nil {
		return err
	}
	log := newLogger(stderr)
	cfg.Logger = log

	rdb, err := rf.client(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	pub, via, err := publisher(rf, pf, getenv, rdb)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if *metricsAddr != "" {
		stop, err := serveMetrics(*metricsAddr, reg, log)
		if err != nil {
			return err
		}
		defer stop()
	}

	w := &worker{pub: pub, work: *work, resultURL: *resultURL, log: log}
	if cf.source != "" {
		catalog, err := cf.open(ctx, rdb, rf.prefix, reg, log)
		if err != nil {
			return err
		}
		defer catalog.Close()
		w.catalog = catalog
		if cf.check > 0 {
			wctx, stop := context.WithCancel(ctx)
			var wg sync.WaitGroup
			wg.Go(func() { catalog.Watch(wctx) })
			defer wg.Wait()
			defer stop()
		}
	}
	q := jobs.NewQueue(rdb, rf.names())
	log.Info("worker started", "stream", q.Stream(), "group", cfg.Group, "consumer", cfg.Name,
		"concurrency", cfg.Concurrency, "publish_via", via, "catalog", cf.source != "")
	if err := q.Consume(ctx, cfg, w.process); err != nil {
		return err
	}
	log.Info("worker stopped")
	return nil
}

// catalogFlags locate the effect catalog and say how it is cached.
type catalogFlags struct {
	source              string
	fresh, stale, check time.Duration
}

// open returns the catalog, cached in rdb under Herald's key prefix, after
// checking that it can be had: a catalog that cannot be read or parsed at
// start stops the worker.
func (cf *catalogFlags) open(ctx context.Context, rdb redis.UniversalClient, prefix string, reg prometheus.Registerer, log *slog.Logger) (*jobs.CatalogCache, error) {
	src, err := jobs.NewCatalogSource(cf.source, nil)
	if err != nil {
		return nil, fmt.Errorf("--catalog: %w", err)
	}
	ns := prefix + "herald:cache:catalog"
	if _, ok := rdb.(*redis.ClusterClient); ok {
		ns = prefix + "herald:cache:{catalog}" // one slot for the cache's scripts
	}
	catalog, err := jobs.NewCatalogCache(rdb, src, jobs.CatalogConfig{
		Fresh:      cf.fresh,
		Stale:      cf.stale,
		Check:      cf.check,
		Namespace:  ns,
		Logger:     log,
		Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	c, err := catalog.Catalog(ctx)
	if err != nil {
		catalog.Close()
		return nil, fmt.Errorf("--catalog: %w", err)
	}
	log.Info("catalog loaded", "source", src.String(), "effects", len(c.Effects))
	return catalog, nil
}

// worker processes jobs.
type worker struct {
	pub       herald.Publisher
	work      time.Duration      // per job, without a catalog
	catalog   *jobs.CatalogCache // nil: every kind is accepted and takes work
	resultURL string             // {effect} is replaced by the job's userEffectId
	log       *slog.Logger
}

// process renders one effect (simulated: it waits the duration of the
// job's kind in the catalog, or w.work without one) and announces the
// result on effect:{id} and user:{user}. The announcement carries the job's
// idempotency key, so a job processed twice (its first worker died before
// the ack) notifies once. A job of a kind the catalog does not define is
// logged and acknowledged; when the catalog cannot be had at all, the job
// is left pending for a retry.
func (w *worker) process(ctx context.Context, j jobs.Job) error {
	work := w.work
	if w.catalog != nil {
		def, ok, err := w.catalog.Lookup(ctx, j.Kind)
		if err != nil {
			return fmt.Errorf("job %s: %w", j.ID, err)
		}
		if !ok {
			w.log.Warn("dropping job of an unknown effect kind", "id", j.ID, "kind", j.Kind)
			return nil
		}
		work = def.Duration()
	}
	t := time.NewTimer(work)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err() // abandoned: left pending, another worker will redo it
	case <-t.C:
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	ids, err := herald.PublishEffectComplete(ctx, w.pub, herald.EffectComplete{
		UserID:       j.User,
		UserEffectID: j.Effect,
		ResultURL:    w.result(j),
		Timestamp:    time.Now(),
		Kind:         j.Kind,
	}, herald.IdempotencyKey(j.IdempotencyKey()))
	var fe *herald.FieldError
	if errors.As(err, &fe) {
		// The job itself is bad (an id unusable in a channel name): no retry
		// can succeed, so it is acknowledged and dropped.
		w.log.Warn("dropping job that cannot be announced", "id", j.ID, "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	w.log.Info("effect complete", "id", j.ID, "effect", j.Effect, "kind", j.Kind, "user", j.User, "events", strings.Join(ids, ","))
	return nil
}

// result is where the result of j is.
func (w *worker) result(j jobs.Job) string {
	return strings.ReplaceAll(w.resultURL, "{effect}", url.PathEscape(j.Effect))
}

// serveMetrics serves reg at http://addr/metrics until stop is called.
func serveMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, nil
}
