package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

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
	work := fs.Duration("work", 500*time.Millisecond, "time one (simulated) effect takes to render")
	resultBase := fs.String("result-base", "https://cdn.example/results/", "results are at {result-base}{userEffectId}.png")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if cfg.Concurrency < 1 || cfg.ClaimAfter <= 0 || cfg.Block <= 0 || *work < 0 {
		return fmt.Errorf("%w: run: --concurrency, --claim-after and --block must be positive, --work not negative", errUsage)
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

	w := &worker{pub: pub, work: *work, resultBase: *resultBase, log: log}
	q := jobs.NewQueue(rdb, rf.names())
	log.Info("worker started", "stream", q.Stream(), "group", cfg.Group, "consumer", cfg.Name,
		"concurrency", cfg.Concurrency, "publish_via", via)
	if err := q.Consume(ctx, cfg, w.process); err != nil {
		return err
	}
	log.Info("worker stopped")
	return nil
}

// worker processes jobs.
type worker struct {
	pub        herald.Publisher
	work       time.Duration
	resultBase string
	log        *slog.Logger
}

// process renders one effect (simulated: it waits w.work) and announces the
// result on effect:{id} and user:{user}. The announcement carries the job's
// idempotency key, so a job processed twice (its first worker died before
// the ack) notifies once.
func (w *worker) process(ctx context.Context, j jobs.Job) error {
	t := time.NewTimer(w.work)
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
		ResultURL:    w.resultURL(j),
		Timestamp:    time.Now(),
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

func (w *worker) resultURL(j jobs.Job) string {
	return w.resultBase + url.PathEscape(j.Effect) + ".png"
}
