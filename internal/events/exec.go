package events

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// How a batch of script calls reaches Redis.
//
// Script calls are grouped by the node that runs them: the one server of a
// single Redis (or the primary a Sentinel names), or on a cluster the
// master of each call's slot. Each node gets its calls in one pipeline, on
// one connection. With replica acknowledgements (LogConfig.ReplicaAcks) the
// pipeline ends with WAIT: the calls appended their events and queued
// their pub/sub messages in the outbox, and WAIT says whether the
// replicas have those writes (WAIT counts the writes of its connection,
// which is why it shares the pipeline, and why a cluster is driven node by
// node rather than through the cluster client's own pipeline). Only then
// does a second pipeline flush the outboxes (flushScript), and the calls
// return. A subscriber therefore never sees an event that a failover can
// take back, and an acknowledged event is on a replica.
//
// Calls that meet a passing condition — replicas that did not confirm in
// time, and on a cluster a slot that moved (MOVED, ASK), a slot being
// migrated (TRYAGAIN), a node failing over (CLUSTERDOWN, MASTERDOWN,
// READONLY, LOADING), a broken or refused connection — are tried again,
// after the cluster client reloaded its slot map (go-redis reloads it on
// MOVED, not when a master stops answering), until the batch's time is
// up. A repeated script call is harmless: its own key makes a repeat
// return the first run's reply.

// ErrNotReplicated is returned by Append when replica acknowledgements are
// on and no replica confirmed the events within the replica timeout. Its
// events were not published to subscribers; they may be later, if the
// node keeps them (retry with the same idempotency key to find out).
var ErrNotReplicated = errors.New("events not confirmed by a replica in time")

// pipeliner runs a pipeline on one connection.
type pipeliner interface {
	Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error)
}

// retryBackoff bounds the waits between tries of a batch.
const (
	minRetry = 20 * time.Millisecond
	maxRetry = 500 * time.Millisecond
)

// run executes calls (publishScript runs, and with an outbox their WAIT and
// flush), leaving each call's reply or error in it. It gives up when ctx
// ends.
func (l *RedisLog) run(ctx context.Context, calls []*scriptCall) {
	l.retrying(ctx, calls, l.runScripts)
	if l.cfg.ReplicaAcks <= 0 {
		return
	}
	var flush []*scriptCall
	for _, sc := range calls {
		if sc.err == nil {
			flush = append(flush, sc)
		}
	}
	l.retrying(ctx, flush, l.flush)
}

// retrying runs step on calls, grouped by node, and runs it again on the
// calls that failed in a way that may pass, with back-off, until none
// does or ctx ends.
func (l *RedisLog) retrying(ctx context.Context, calls []*scriptCall, step func(context.Context, pipeliner, []*scriptCall)) {
	wait := minRetry
	for todo := calls; len(todo) > 0; {
		groups, err := l.byNode(ctx, todo)
		if err != nil {
			for _, sc := range todo {
				sc.err = err
			}
		}
		if len(groups) == 1 {
			// One node, as always outside a cluster: on this goroutine.
			// A new one would grow its stack through go-redis's pipeline
			// for every batch (4 % of the gateway's CPU at 5k HTTP
			// publishes/s).
			step(ctx, groups[0].node, groups[0].calls)
		} else {
			var wg sync.WaitGroup
			for _, g := range groups {
				wg.Go(func() { step(ctx, g.node, g.calls) })
			}
			wg.Wait()
		}
		_, cluster := l.rdb.(*redis.ClusterClient)
		var again []*scriptCall
		for _, sc := range todo {
			if sc.err != nil && passing(sc.err, cluster) {
				again = append(again, sc)
			}
		}
		if len(again) == 0 || ctx.Err() != nil {
			return
		}
		if cc, ok := l.rdb.(*redis.ClusterClient); ok {
			cc.ReloadState(ctx)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, maxRetry)
		todo = again
	}
}

// nodeCalls are the calls one node runs.
type nodeCalls struct {
	node  pipeliner
	calls []*scriptCall
}

// byNode groups calls by the node that serves them.
func (l *RedisLog) byNode(ctx context.Context, calls []*scriptCall) ([]nodeCalls, error) {
	cc, ok := l.rdb.(*redis.ClusterClient)
	if !ok {
		return []nodeCalls{{node: l.rdb, calls: calls}}, nil
	}
	var out []nodeCalls
	index := map[*redis.Client]int{}
	for _, sc := range calls {
		n, err := cc.MasterForKey(ctx, sc.keys[0])
		if err != nil {
			return nil, fmt.Errorf("find the node of a partition: %w", err)
		}
		i, ok := index[n]
		if !ok {
			i = len(out)
			index[n] = i
			out = append(out, nodeCalls{node: n})
		}
		out[i].calls = append(out[i].calls, sc)
	}
	return out, nil
}

// runScripts runs the publish script calls of one node in one pipeline,
// followed by WAIT when replicas must confirm.
func (l *RedisLog) runScripts(ctx context.Context, node pipeliner, calls []*scriptCall) {
	cmds, wait := l.evalAll(ctx, node, publishScript, len(calls), func(i int) ([]string, []any) {
		return calls[i].keys, calls[i].args
	})
	replicated := true
	if wait != nil {
		n, err := wait.Result()
		replicated = err == nil && n >= int64(l.cfg.ReplicaAcks)
	}
	for i, sc := range calls {
		sc.res, sc.err = nil, nil
		res, err := cmds[i].Slice()
		switch {
		case err != nil:
			sc.err = err
		case !replicated:
			sc.err = ErrNotReplicated
		default:
			sc.res = res
			if l.cfg.ReplicaAcks > 0 && len(res) > 0 {
				sc.upto, _ = res[len(res)-1].(int64)
			}
		}
	}
}

// flush publishes the outboxes the calls of one node filled, up to each
// call's newest entry.
func (l *RedisLog) flush(ctx context.Context, node pipeliner, calls []*scriptCall) {
	_, _ = l.flushCounted(ctx, node, calls)
}

// flushCounted is flush, returning how many entries it published and the
// first error.
func (l *RedisLog) flushCounted(ctx context.Context, node pipeliner, calls []*scriptCall) (int, error) {
	upto := map[string]int64{} // per outbox: the newest entry any call may flush
	for _, sc := range calls {
		upto[sc.tag] = max(upto[sc.tag], sc.upto)
	}
	tags := make([]string, 0, len(upto))
	cmds := make([]*redis.Cmd, 0, len(upto))
	exec := func() {
		tags, cmds = tags[:0], cmds[:0]
		_, _ = node.Pipelined(ctx, func(p redis.Pipeliner) error {
			for tag, n := range upto {
				tags = append(tags, tag)
				cmds = append(cmds, flushScript.EvalSha(ctx, p, []string{l.names.Outbox(tag)}, n, l.pub))
			}
			return nil
		})
	}
	exec()
	if noScript(cmds) {
		if s, ok := node.(redis.Scripter); ok && flushScript.Load(ctx, s).Err() == nil {
			exec()
		}
	}
	failed := map[string]error{}
	var first error
	published := 0
	for i, cmd := range cmds {
		n, err := cmd.Int64()
		if err != nil {
			failed[tags[i]] = err
			first = cmp.Or(first, err)
			continue
		}
		published += int(n)
	}
	for _, sc := range calls {
		sc.err = failed[sc.tag]
	}
	return published, first
}

// evalAll runs n calls of script (call i's keys and arguments from call)
// in one pipeline on node, followed by WAIT when replicas must confirm
// (wait is nil otherwise). Scripts are not loaded inside pipelines: on
// NOSCRIPT it loads the script and runs the pipeline once more.
func (l *RedisLog) evalAll(ctx context.Context, node pipeliner, script *redis.Script, n int, call func(i int) (keys []string, args []any)) (cmds []*redis.Cmd, wait *redis.IntCmd) {
	cmds = make([]*redis.Cmd, n)
	exec := func() {
		_, _ = node.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := range n {
				keys, args := call(i)
				cmds[i] = script.EvalSha(ctx, p, keys, args...)
			}
			if l.cfg.ReplicaAcks > 0 {
				wait = redis.NewIntCmd(ctx, "wait", l.cfg.ReplicaAcks, l.cfg.ReplicaTimeout.Milliseconds())
				p.Process(ctx, wait)
			}
			return nil
		})
	}
	exec()
	if noScript(cmds) {
		if s, ok := node.(redis.Scripter); ok && script.Load(ctx, s).Err() == nil {
			exec()
		}
	}
	return cmds, wait
}

func noScript(cmds []*redis.Cmd) bool {
	for _, c := range cmds {
		if c != nil && redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			return true
		}
	}
	return false
}

// passing reports whether err is a condition that goes away by itself
// (see the top of this file), after which the script did not run or may
// run again safely. On a single Redis only missing replica confirmations
// are: go-redis has retried the rest already, and a Redis that is down
// fails a publish at once.
func passing(err error, cluster bool) bool {
	if errors.Is(err, ErrNotReplicated) {
		return true
	}
	if !cluster {
		return false
	}
	for _, p := range []string{"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "LOADING"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// pendingScript returns the outbox counter when the outbox holds entries,
// and writes the counter back unchanged: a write that WAIT on the same
// connection can count, which replicas have only once they have every
// entry numbered up to it. 0 when the outbox is empty.
//
// KEYS[1] the outbox, KEYS[2] its counter.
var pendingScript = redis.NewScript(`
if redis.call('LLEN', KEYS[1]) == 0 then return 0 end
local n = redis.call('GET', KEYS[2])
if not n then return 0 end
redis.call('SET', KEYS[2], n)
return tonumber(n)
`)

// FlushPending publishes what waits in the outboxes (one on a single
// Redis, one per partition on a cluster) and the replicas already have:
// entries a publish left behind when its flush failed, or when its
// gateway stopped between WAIT and the flush, and direct publishes queued
// behind them. Without it they would wait for the next publish to their
// partition, and a quiet partition's subscribers would not get events
// already in history. With ReplicaAcks it first confirms with WAIT that
// the replicas have every entry it publishes; without, it publishes them
// all (this log's deployment asks for no confirmation). The broker calls
// it on every probe tick. It returns how many entries it published.
func (l *RedisLog) FlushPending(ctx context.Context) (int, error) {
	var calls []*scriptCall
	if l.cfg.Sharded {
		for p := range Partitions {
			tag := Tag(p)
			calls = append(calls, &scriptCall{tag: tag, keys: []string{l.names.Outbox(tag)}})
		}
	} else {
		calls = []*scriptCall{{keys: []string{l.names.Outbox("")}}}
	}
	groups, err := l.byNode(ctx, calls)
	if err != nil {
		return 0, err
	}
	var mu sync.Mutex
	var errs []error
	published := 0
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Go(func() {
			n, err := l.flushPending(ctx, g.node, g.calls)
			mu.Lock()
			published += n
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return published, errors.Join(errs...)
}

// flushPending is FlushPending on one node: one pipeline finds the
// outboxes with entries (and, with replica acks, WAITs for the write it
// made after them), a second flushes those.
func (l *RedisLog) flushPending(ctx context.Context, node pipeliner, calls []*scriptCall) (int, error) {
	cmds, wait := l.evalAll(ctx, node, pendingScript, len(calls), func(i int) ([]string, []any) {
		return []string{calls[i].keys[0], l.names.OutboxSeq(calls[i].tag)}, nil
	})
	var due []*scriptCall
	for i, sc := range calls {
		n, err := cmds[i].Int64()
		if err != nil {
			return 0, fmt.Errorf("find pending outbox entries: %w", err)
		}
		if n > 0 {
			sc.upto = n
			due = append(due, sc)
		}
	}
	if len(due) == 0 {
		return 0, nil
	}
	if wait != nil {
		if n, err := wait.Result(); err != nil || n < int64(l.cfg.ReplicaAcks) {
			return 0, ErrNotReplicated
		}
	}
	n, err := l.flushCounted(ctx, node, due)
	if err != nil {
		return n, fmt.Errorf("flush pending outbox entries: %w", err)
	}
	return n, nil
}
