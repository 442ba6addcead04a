package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/jobs"
	"github.com/heraldgw/herald/internal/redistest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or 10 s have passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recorder is a Handler that records the jobs it was given and fails the
// first fail deliveries of each.
type recorder struct {
	mu    sync.Mutex // guards calls
	calls map[string]int
	jobs  []jobs.Job
	fail  int
}

func (r *recorder) handle(ctx context.Context, j jobs.Job) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.calls == nil {
		r.calls = map[string]int{}
	}
	r.calls[j.ID]++
	if r.calls[j.ID] <= r.fail {
		return errors.New("simulated failure")
	}
	r.jobs = append(r.jobs, j)
	return nil
}

func (r *recorder) done() []jobs.Job {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]jobs.Job(nil), r.jobs...)
}

// consume runs q.Consume in the background until the test ends (or the
// returned stop is called, which waits for it).
func consume(t *testing.T, q *jobs.Queue, cfg jobs.ConsumerConfig, h jobs.Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- q.Consume(ctx, cfg, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				if err != nil {
					t.Errorf("Consume: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Consume did not return within 10s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func pending(t *testing.T, rdb *redis.Client, q *jobs.Queue, group string) int64 {
	t.Helper()
	p, err := rdb.XPending(ctxT(t), q.Stream(), group).Result()
	if err != nil {
		t.Fatalf("XPENDING: %v", err)
	}
	return p.Count
}

func TestEnqueueConsume(t *testing.T) {
	rdb := redistest.Start(t).Client()
	q := jobs.NewQueue(rdb, events.Names{Prefix: "p:"})
	if q.Stream() != "p:herald:jobs" {
		t.Fatalf("stream %q, want p:herald:jobs", q.Stream())
	}
	// Enqueued before the group exists: the group starts at the beginning.
	ids, err := q.Enqueue(ctxT(t), jobs.Job{User: "1", Effect: "e1", Kind: "blur"}, jobs.Job{Effect: "e2", Kind: "sepia"})
	if err != nil || len(ids) != 2 {
		t.Fatalf("Enqueue: got %v, %v", ids, err)
	}
	var r recorder
	consume(t, q, jobs.ConsumerConfig{Name: "c1", Concurrency: 2, Block: 50 * time.Millisecond}, r.handle)
	ids3, err := q.Enqueue(ctxT(t), jobs.Job{User: "3", Effect: "e3", Kind: "blur"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "3 jobs handled", func() bool { return len(r.done()) == 3 })
	want := map[string]jobs.Job{
		ids[0]:  {ID: ids[0], User: "1", Effect: "e1", Kind: "blur"},
		ids[1]:  {ID: ids[1], Effect: "e2", Kind: "sepia"},
		ids3[0]: {ID: ids3[0], User: "3", Effect: "e3", Kind: "blur"},
	}
	for _, j := range r.done() {
		if want[j.ID] != j {
			t.Errorf("handled %+v, want %+v", j, want[j.ID])
		}
	}
	waitFor(t, "all acked", func() bool { return pending(t, rdb, q, "workers") == 0 })
	if k := (jobs.Job{ID: "1-2", Effect: "e-9"}).IdempotencyKey(); k != "effect:e-9" {
		t.Errorf("IdempotencyKey: got %q", k)
	}
}

func TestEnqueueRefusesJobWithoutEffect(t *testing.T) {
	rdb := redistest.Start(t).Client()
	q := jobs.NewQueue(rdb, events.Names{})
	if _, err := q.Enqueue(ctxT(t), jobs.Job{Effect: "ok"}, jobs.Job{User: "1"}); !errors.Is(err, jobs.ErrNoEffect) {
		t.Errorf("got %v, want ErrNoEffect", err)
	}
	if n := rdb.Exists(ctxT(t), q.Stream()).Val(); n != 0 {
		t.Errorf("stream written despite the error")
	}
}

func TestMalformedJobIsDropped(t *testing.T) {
	rdb := redistest.Start(t).Client()
	q := jobs.NewQueue(rdb, events.Names{})
	if err := rdb.XAdd(ctxT(t), &redis.XAddArgs{Stream: q.Stream(), Values: []string{"user", "1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	good, _ := q.Enqueue(ctxT(t), jobs.Job{Effect: "e"})
	var r recorder
	consume(t, q, jobs.ConsumerConfig{Name: "c", Block: 50 * time.Millisecond}, r.handle)
	waitFor(t, "good job handled", func() bool { return len(r.done()) == 1 })
	waitFor(t, "both acked", func() bool { return pending(t, rdb, q, "workers") == 0 })
	if got := r.done()[0].ID; got != good[0] {
		t.Errorf("handled %s, want only %s", got, good[0])
	}
}

// A failed job stays pending and is claimed again after ClaimAfter.
func TestFailedJobIsRetried(t *testing.T) {
	rdb := redistest.Start(t).Client()
	q := jobs.NewQueue(rdb, events.Names{})
	ids, _ := q.Enqueue(ctxT(t), jobs.Job{Effect: "e"})
	r := recorder{fail: 1}
	consume(t, q, jobs.ConsumerConfig{Name: "c", ClaimAfter: 100 * time.Millisecond, Block: 50 * time.Millisecond}, r.handle)
	waitFor(t, "job handled on retry", func() bool { return len(r.done()) == 1 })
	r.mu.Lock()
	calls := r.calls[ids[0]]
	r.mu.Unlock()
	if calls != 2 {
		t.Errorf("handler calls: got %d, want 2", calls)
	}
	waitFor(t, "acked", func() bool { return pending(t, rdb, q, "workers") == 0 })
}

// A job read by a consumer that then died is claimed by another once idle
// for ClaimAfter; a job left pending for a consumer's own name is taken up
// at once when that consumer starts again.
func TestCrashedConsumersJobs(t *testing.T) {
	rdb := redistest.Start(t).Client()
	q := jobs.NewQueue(rdb, events.Names{})
	if err := rdb.XGroupCreateMkStream(ctxT(t), q.Stream(), "workers", "0").Err(); err != nil {
		t.Fatal(err)
	}
	ids, _ := q.Enqueue(ctxT(t), jobs.Job{Effect: "of-a"}, jobs.Job{Effect: "of-b"})
	for i, name := range []string{"a", "b"} { // each reads one job and "crashes"
		res, err := rdb.XReadGroup(ctxT(t), &redis.XReadGroupArgs{Group: "workers", Consumer: name, Streams: []string{q.Stream(), ">"}, Count: 1, Block: -1}).Result()
		if err != nil || res[0].Messages[0].ID != ids[i] {
			t.Fatalf("consumer %s read: %v, %v", name, res, err)
		}
	}
	// b restarts with a long ClaimAfter: it takes up its own job at once,
	// and a's only after a's job has been idle long enough.
	var r recorder
	stop := consume(t, q, jobs.ConsumerConfig{Name: "b", ClaimAfter: 300 * time.Millisecond, Block: 50 * time.Millisecond}, r.handle)
	waitFor(t, "own job handled", func() bool { return len(r.done()) >= 1 })
	if got := r.done()[0].Effect; got != "of-b" {
		t.Errorf("first job handled: got %s, want b's own of-b", got)
	}
	waitFor(t, "a's job claimed and handled", func() bool { return len(r.done()) == 2 })
	waitFor(t, "all acked", func() bool { return pending(t, rdb, q, "workers") == 0 })
	stop()
}

// At cancel, a job in progress is abandoned without ack and Consume returns.
func TestCancelLeavesJobPending(t *testing.T) {
	rdb := redistest.Start(t).Client()
	q := jobs.NewQueue(rdb, events.Names{})
	started := make(chan struct{})
	stop := consume(t, q, jobs.ConsumerConfig{Name: "c", Block: 50 * time.Millisecond}, func(ctx context.Context, j jobs.Job) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	})
	if _, err := q.Enqueue(ctxT(t), jobs.Job{Effect: "slow"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("job not started")
	}
	stop()
	if n := pending(t, rdb, q, "workers"); n != 1 {
		t.Errorf("pending after cancel: got %d, want 1", n)
	}
}

// Deleting the stream under a running consumer (NOGROUP) recreates the
// group, and consumption goes on.
func TestStreamDeletedUnderConsumer(t *testing.T) {
	rdb := redistest.Start(t).Client()
	q := jobs.NewQueue(rdb, events.Names{})
	var r recorder
	consume(t, q, jobs.ConsumerConfig{Name: "c", Block: 20 * time.Millisecond}, r.handle)
	waitFor(t, "group created", func() bool {
		g, _ := rdb.XInfoGroups(ctxT(t), q.Stream()).Result()
		return len(g) == 1
	})
	if err := rdb.Del(ctxT(t), q.Stream()).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "group recreated", func() bool {
		g, _ := rdb.XInfoGroups(ctxT(t), q.Stream()).Result()
		return len(g) == 1
	})
	if _, err := q.Enqueue(ctxT(t), jobs.Job{Effect: "after"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "job handled", func() bool { return len(r.done()) == 1 })
}

func TestConsumeNeedsName(t *testing.T) {
	rdb := redistest.Start(t).Client()
	err := jobs.NewQueue(rdb, events.Names{}).Consume(ctxT(t), jobs.ConsumerConfig{}, func(context.Context, jobs.Job) error { return nil })
	if err == nil {
		t.Error("Consume without a name: got nil error")
	}
}

func ExampleJob_IdempotencyKey() {
	fmt.Println(jobs.Job{ID: "1732600000000-0", Effect: "3f2c"}.IdempotencyKey())
	// Output: effect:3f2c
}
