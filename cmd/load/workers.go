package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync/atomic"
	"time"
)

// workerRoleEnv marks a worker process, so that a test binary standing in
// for the load tool knows to act as one.
const workerRoleEnv = "HERALD_LOAD_ROLE"

// workerProc is a running worker process as the coordinator sees it.
type workerProc struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	answers  chan workerMsg            // "ready" and "snap" lines
	progress atomic.Pointer[workerMsg] // the latest "progress" line
	done     chan struct{}             // closed when its stdout ended and it exited
}

// startWorkers starts one worker process per job, the tool's own binary
// run as `load worker`, and hands each its job.
func startWorkers(jobs []job, stderr io.Writer) ([]*workerProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var ws []*workerProc
	for _, j := range jobs {
		cmd := exec.Command(exe, "worker")
		cmd.Env = append(os.Environ(), workerRoleEnv+"=worker")
		cmd.Stderr = stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			stopWorkers(ws)
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			stopWorkers(ws)
			return nil, err
		}
		dieWithParent(cmd)
		if err := cmd.Start(); err != nil {
			stopWorkers(ws)
			return nil, fmt.Errorf("start worker: %w", err)
		}
		w := &workerProc{cmd: cmd, stdin: in, answers: make(chan workerMsg, 4), done: make(chan struct{})}
		ws = append(ws, w)
		go w.readLines(out) // ends at the worker's exit
		b, _ := json.Marshal(j)
		if _, err := in.Write(append(b, '\n')); err != nil {
			stopWorkers(ws)
			return nil, fmt.Errorf("hand a worker its job: %w", err)
		}
	}
	return ws, nil
}

func (w *workerProc) readLines(out io.Reader) {
	defer close(w.done)
	defer close(w.answers)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var m workerMsg
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		if m.Type == "progress" {
			w.progress.Store(&m)
			continue
		}
		w.answers <- m
	}
	w.cmd.Wait()
}

// await returns each worker's next answer.
func await(ctx context.Context, ws []*workerProc) ([]workerMsg, error) {
	out := make([]workerMsg, len(ws))
	for i, w := range ws {
		select {
		case m, ok := <-w.answers:
			if !ok {
				return nil, fmt.Errorf("worker %d exited", i)
			}
			out[i] = m
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return out, nil
}

// snap asks every worker for what it recorded since the last snap.
func snap(ctx context.Context, ws []*workerProc) ([]workerMsg, error) {
	for _, w := range ws {
		if _, err := io.WriteString(w.stdin, "snap\n"); err != nil {
			return nil, fmt.Errorf("worker: %w", err)
		}
	}
	return await(ctx, ws)
}

// progress sums the workers' latest progress lines.
func progress(ws []*workerProc) workerMsg {
	var sum workerMsg
	for _, w := range ws {
		if m := w.progress.Load(); m != nil {
			sum.Connected += m.Connected
			sum.Delivered += m.Delivered
			sum.Dups += m.Dups
			sum.Closed += m.Closed
			sum.StalledConnected += m.StalledConnected
			sum.StalledClosed += m.StalledClosed
		}
	}
	return sum
}

// stopWorkers closes the workers' stdin, which tells them to close their
// sockets and exit, and waits for them (killing any that hang).
func stopWorkers(ws []*workerProc) {
	for _, w := range ws {
		w.stdin.Close()
	}
	deadline := time.After(15 * time.Second)
	for _, w := range ws {
		select {
		case <-w.done:
		case <-deadline:
			w.cmd.Process.Kill()
			<-w.done
		}
	}
}

// workerPIDs returns the workers' process ids.
func workerPIDs(ws []*workerProc) []int {
	var pids []int
	for _, w := range ws {
		pids = append(pids, w.cmd.Process.Pid)
	}
	return pids
}
