// Package jobs is the queue between the app that asks for effects and the
// workers that render them: a Redis Stream (events.Names.Jobs,
// "herald:jobs") read through a consumer group, so that each job goes to one
// worker, a job is removed from the group's pending list only once its
// handler succeeded (XACK), and a job whose worker died is claimed by
// another worker after a while (XAUTOCLAIM).
//
// Delivery is at least once: a job can be handled twice (its worker died
// after doing the work but before the XACK, or was merely slow). Handlers
// make that harmless with the job's [Job.IdempotencyKey].
package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
)

// MaxLen bounds the job stream: Enqueue trims it to about this many entries
// (MAXLEN ~), so a queue nobody consumes cannot eat Redis's memory. A job
// trimmed while pending is dropped when it is claimed.
const MaxLen = 100_000

// Job is one effect to render. On the stream its fields are "user",
// "effect" and "kind".
type Job struct {
	ID     string // stream entry id, assigned by Redis when enqueued
	User   string // the user who asked for it; may be empty
	Effect string // the userEffectId; required
	Kind   string // the effect's name, for example "blur"
}

// IdempotencyKey is the key under which a job's completion is published,
// "effect:{Effect}": a job handled twice is announced once, and so is an
// effect enqueued twice (an app retrying, or go-redis retrying an XADD
// whose reply was lost, adds a second entry with another id).
func (j Job) IdempotencyKey() string { return "effect:" + j.Effect }

// Queue is the job stream of one Herald (one key prefix). It is safe for
// concurrent use.
type Queue struct {
	rdb    redis.UniversalClient
	stream string
}

// NewQueue returns the queue at names.Jobs() in rdb.
func NewQueue(rdb redis.UniversalClient, names events.Names) *Queue {
	return &Queue{rdb: rdb, stream: names.Jobs()}
}

// Stream returns the Redis key of the job stream.
func (q *Queue) Stream() string { return q.stream }

// ErrNoEffect is returned by Enqueue for a job without an Effect.
var ErrNoEffect = errors.New("job without effect id")

// Enqueue appends jobs to the stream in one round trip and returns their
// ids in order. Their ID fields are ignored. A job without Effect fails the
// whole call before anything is sent.
func (q *Queue) Enqueue(ctx context.Context, jobs ...Job) ([]string, error) {
	for i, j := range jobs {
		if j.Effect == "" {
			return nil, fmt.Errorf("enqueue job %d: %w", i, ErrNoEffect)
		}
	}
	cmds := make([]*redis.StringCmd, len(jobs))
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, j := range jobs {
			cmds[i] = p.XAdd(ctx, &redis.XAddArgs{
				Stream: q.stream,
				MaxLen: MaxLen,
				Approx: true,
				Values: []string{"user", j.User, "effect", j.Effect, "kind", j.Kind},
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("enqueue %d job(s) on %s: %w", len(jobs), q.stream, err)
	}
	ids := make([]string, len(cmds))
	for i, c := range cmds {
		ids[i] = c.Val()
	}
	return ids, nil
}

// Handler handles one job. Returning nil acknowledges the job: it is done
// and never delivered again. Returning an error leaves it pending, to be
// claimed and handled again (by any consumer) once it has been idle for
// ConsumerConfig.ClaimAfter; a job that can never succeed should be logged
// and acknowledged instead. A handler must return soon after ctx is done.
type Handler func(ctx context.Context, j Job) error

// ConsumerConfig holds the settings of Consume.
type ConsumerConfig struct {
	// Group is the consumer group; every worker of one pool uses the same.
	// Default "workers".
	Group string

	// Name identifies this consumer within the group; required. It should
	// stay the same across restarts of one worker (hostname and pid, say),
	// so that a restarted worker takes up its own pending jobs at once.
	Name string

	// Concurrency is how many jobs are handled at once. Default 1.
	Concurrency int

	// ClaimAfter is how long a job may stay pending, unacknowledged, before
	// another consumer takes it over; longer than the slowest job should
	// take. Default 30 s.
	ClaimAfter time.Duration

	// Block is the longest one read waits for new jobs. It bounds how long
	// Consume takes to notice that ctx is done. Default 2 s.
	Block time.Duration

	// Logger receives what goes wrong, and each job dropped. Default: no
	// logging.
	Logger *slog.Logger
}

func (c *ConsumerConfig) setDefaults() {
	if c.Group == "" {
		c.Group = "workers"
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 1
	}
	if c.ClaimAfter <= 0 {
		c.ClaimAfter = 30 * time.Second
	}
	if c.Block <= 0 {
		c.Block = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// ackTimeout bounds the XACK of a handled job, which runs even when ctx is
// already done: work that was finished should not be redone.
const ackTimeout = 5 * time.Second

// Consume handles the jobs of the stream until ctx is done. It creates the
// consumer group (and the stream) if missing, starting at the beginning of
// the stream, first handles the jobs still pending for cfg.Name (left by an
// earlier run of this consumer), and then runs cfg.Concurrency loops that
// each claim jobs idle for cfg.ClaimAfter from any consumer (XAUTOCLAIM) and
// read new ones (XREADGROUP), handing each to h.
//
// Redis errors while running are logged and retried with a growing pause;
// they do not end Consume. It returns nil once ctx is done and every handler
// call has returned, or an error if it could not start.
func (q *Queue) Consume(ctx context.Context, cfg ConsumerConfig, h Handler) error {
	cfg.setDefaults()
	if cfg.Name == "" {
		return errors.New("consume: empty consumer name")
	}
	c := &consumer{q: q, cfg: cfg, h: h, log: cfg.Logger.With("stream", q.stream, "group", cfg.Group, "consumer", cfg.Name)}
	if err := c.ensureGroup(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	c.recoverOwn(ctx)
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Go(func() { c.loop(ctx) })
	}
	wg.Wait()
	return nil
}

// consumer is one Consume call.
type consumer struct {
	q   *Queue
	cfg ConsumerConfig
	h   Handler
	log *slog.Logger
}

// ensureGroup creates the group at the start of the stream, creating the
// stream too; a group that exists is left as it is.
func (c *consumer) ensureGroup(ctx context.Context) error {
	err := c.q.rdb.XGroupCreateMkStream(ctx, c.q.stream, c.cfg.Group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create consumer group %s on %s: %w", c.cfg.Group, c.q.stream, err)
	}
	return nil
}

// recoverOwn handles the jobs already pending for this consumer's name,
// oldest first, before any loop starts (so none of them is handled twice
// here). Jobs whose handler fails stay pending and are skipped. It reads
// one job at a time, like the loops: reading a pending job resets its idle
// time, which must not run out (letting another consumer claim it) while
// the job waits behind others here.
func (c *consumer) recoverOwn(ctx context.Context) {
	after := "0"
	for ctx.Err() == nil {
		res, err := c.q.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: c.cfg.Group, Consumer: c.cfg.Name,
			Streams: []string{c.q.stream, after},
			Count:   1,
			Block:   -1, // history only: never blocks
		}).Result()
		if err != nil {
			if !errors.Is(err, redis.Nil) && ctx.Err() == nil {
				c.log.Warn("reading own pending jobs failed; other consumers will claim them", "err", err)
			}
			return
		}
		if len(res) == 0 || len(res[0].Messages) == 0 {
			return
		}
		for _, m := range res[0].Messages {
			c.handle(ctx, m)
			after = m.ID
		}
	}
}

// loop claims and reads jobs and handles them one at a time until ctx is
// done.
func (c *consumer) loop(ctx context.Context) {
	claimEvery := max(c.cfg.ClaimAfter/2, 10*time.Millisecond)
	block := min(c.cfg.Block, claimEvery) // so claiming is not starved by a long read
	nextClaim := time.Now()
	cursor := "0-0"
	var pause time.Duration // after a Redis error
	for ctx.Err() == nil {
		var msgs []redis.XMessage
		var err error
		if !time.Now().Before(nextClaim) {
			// One job at a time, like the reads: a claimed job's idle time
			// starts again, and should not run out while it waits here.
			var next string
			msgs, next, err = c.q.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
				Stream: c.q.stream, Group: c.cfg.Group, Consumer: c.cfg.Name,
				MinIdle: c.cfg.ClaimAfter, Start: cursor, Count: 1,
			}).Result()
			if err == nil {
				cursor = next
				if cursor == "0-0" || cursor == "" {
					cursor = "0-0" // scanned the whole pending list; rest a while
					nextClaim = time.Now().Add(claimEvery)
				}
			}
			if err == nil && len(msgs) > 0 {
				c.log.Info("claimed jobs of stalled consumers", "n", len(msgs))
			}
		} else {
			var res []redis.XStream
			res, err = c.q.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
				Group: c.cfg.Group, Consumer: c.cfg.Name,
				Streams: []string{c.q.stream, ">"},
				Count:   1,
				Block:   block,
			}).Result()
			if errors.Is(err, redis.Nil) {
				err = nil // no new job within block
			}
			if len(res) > 0 {
				msgs = res[0].Messages
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			pause = min(max(2*pause, 100*time.Millisecond), 5*time.Second)
			c.log.Warn("job stream read failed; retrying", "err", err, "pause", pause)
			if strings.HasPrefix(err.Error(), "NOGROUP") { // stream or group deleted under us
				if err := c.ensureGroup(ctx); err != nil && ctx.Err() == nil {
					c.log.Warn("recreating consumer group failed", "err", err)
				}
			}
			sleep(ctx, pause)
			continue
		}
		pause = 0
		for _, m := range msgs {
			c.handle(ctx, m)
		}
	}
}

// handle runs the handler for one stream entry and acknowledges it when
// the handler succeeded or the entry is not a job.
func (c *consumer) handle(ctx context.Context, m redis.XMessage) {
	j, err := decode(m)
	if err != nil {
		c.log.Warn("dropping malformed job", "id", m.ID, "err", err)
		c.ack(ctx, m.ID)
		return
	}
	if err := c.h(ctx, j); err != nil {
		if ctx.Err() != nil {
			c.log.Info("job abandoned at shutdown; left pending", "id", j.ID)
			return
		}
		c.log.Error("job failed; left pending for a retry", "id", j.ID, "effect", j.Effect, "err", err,
			"retry_after", c.cfg.ClaimAfter)
		return
	}
	c.ack(ctx, j.ID)
}

func (c *consumer) ack(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
	defer cancel()
	if err := c.q.rdb.XAck(ctx, c.q.stream, c.cfg.Group, id).Err(); err != nil {
		c.log.Warn("ack failed; the job will be handled again", "id", id, "err", err)
	}
}

// decode reads a job from a stream entry. An entry trimmed from the stream
// while pending comes back without values.
func decode(m redis.XMessage) (Job, error) {
	if m.Values == nil {
		return Job{}, errors.New("entry no longer in the stream")
	}
	field := func(name string) string {
		s, _ := m.Values[name].(string)
		return s
	}
	j := Job{ID: m.ID, User: field("user"), Effect: field("effect"), Kind: field("kind")}
	if j.Effect == "" {
		return Job{}, ErrNoEffect
	}
	return j, nil
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
