package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/heraldgw/herald/internal/events"
	"github.com/heraldgw/herald/internal/jobs"
)

// demoKinds are the effect names synthetic jobs pick from.
var demoKinds = [...]string{"blur", "sepia", "pixelate", "vignette", "sharpen"}

// runDemo is "worker demo": enqueue synthetic jobs at a steady rate and
// print how many were enqueued.
func runDemo(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	rf := addRedisFlags(fs)
	var d demoConfig
	fs.Float64Var(&d.rate, "rate", 10, "jobs per second")
	fs.DurationVar(&d.duration, "duration", 10*time.Second, "how long to enqueue; 0: until interrupted")
	fs.IntVar(&d.users, "users", 10, "jobs belong to random users 1..users (log in to the demo page as 1, say)")
	fs.StringVar(&d.user, "user", "", "jobs all belong to this user instead (the one logged in to the demo page)")
	fs.IntVar(&d.count, "count", 0, "stop after this many jobs; 0: no limit")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if d.rate <= 0 || d.users < 1 || d.duration < 0 || d.count < 0 {
		return fmt.Errorf("%w: demo: --rate and --users must be positive, --duration and --count not negative", errUsage)
	}
	if d.user != "" {
		if _, _, err := events.ParseChannel(events.UserChannel(d.user)); err != nil {
			return fmt.Errorf("%w: demo: --user %q: only letters, digits and :_.-", errUsage, d.user)
		}
	}
	if err := rf.resolve(getenv); err != nil {
		return err
	}
	rdb, err := rf.client(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	q := jobs.NewQueue(rdb, rf.names())
	n, err := d.enqueue(ctx, q)
	fmt.Fprintf(stdout, "enqueued %d jobs on %s\n", n, q.Stream())
	return err
}

type demoConfig struct {
	rate     float64       // jobs per second
	duration time.Duration // 0: until ctx is done
	users    int
	user     string // set: every job's user, instead of 1..users
	count    int    // 0: no limit
}

// jobUser is the user of the next job.
func (d demoConfig) jobUser() string {
	if d.user != "" {
		return d.user
	}
	return strconv.Itoa(1 + rand.IntN(d.users))
}

// enqueue adds jobs at d.rate, the first at once, until d.duration has
// passed, d.count jobs were added or ctx is done, and returns how many it
// added. Each tick tops the total up to what the rate allows by then, in
// one round trip, so high rates do not need a tick per job.
func (d demoConfig) enqueue(ctx context.Context, q *jobs.Queue) (int, error) {
	interval := min(max(time.Duration(float64(time.Second)/d.rate), 10*time.Millisecond), time.Second)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var end <-chan time.Time
	if d.duration > 0 {
		t := time.NewTimer(d.duration)
		defer t.Stop()
		end = t.C
	}
	start := time.Now()
	sent := 0
	for {
		due := int(time.Since(start).Seconds()*d.rate) + 1
		if d.count > 0 {
			due = min(due, d.count)
		}
		if n := due - sent; n > 0 {
			batch := make([]jobs.Job, n)
			for i := range batch {
				batch[i] = jobs.Job{
					User:   d.jobUser(),
					Effect: uuid.NewString(),
					Kind:   demoKinds[rand.IntN(len(demoKinds))],
				}
			}
			if _, err := q.Enqueue(ctx, batch...); err != nil {
				if ctx.Err() != nil {
					return sent, nil
				}
				return sent, err
			}
			sent += n
		}
		if d.count > 0 && sent >= d.count {
			return sent, nil
		}
		select {
		case <-ctx.Done():
			return sent, nil
		case <-end:
			return sent, nil
		case <-tick.C:
		}
	}
}
