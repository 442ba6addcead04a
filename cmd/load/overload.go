package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// The overload scenario is broadcast at a rate the server cannot write in
// time, plus -stalled sockets that subscribe and then stop reading. It
// asks three things of a server: that publish calls keep being accepted,
// that its memory stays bounded, and that it closes the stalled sockets
// (Herald: 4009) and not the healthy ones. The pieces here are what it
// adds to a publishing phase: memory samples, Herald's own close counts,
// and waking the stalled sockets at the end to learn how they ended.

// memSamples is what sampleMemory saw.
type memSamples struct {
	start, peak, end int64     // RSS of the servers, bytes
	perSecond        []float64 // RSS once a second, MB
	tcpPeak          int64     // kernel TCP buffer memory, peak minus start, bytes (machine-wide)
}

// sampleMemory reads the servers' RSS (and the kernel's TCP memory) every
// 100 ms until ctx is done.
func sampleMemory(ctx context.Context, pids []int) memSamples {
	var m memSamples
	tcp0 := tcpMem()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		rss := sumRSS(pids)
		if i == 0 {
			m.start = rss
		}
		if i%10 == 0 {
			m.perSecond = append(m.perSecond, math.Round(float64(rss)/1e5)/10)
		}
		m.peak, m.end = max(m.peak, rss), rss
		m.tcpPeak = max(m.tcpPeak, tcpMem()-tcp0)
		select {
		case <-ctx.Done():
			return m
		case <-t.C:
		}
	}
}

// tcpMem returns the memory the kernel holds in TCP buffers, all sockets of
// the machine (/proc/net/sockstat, in pages), in bytes; 0 where unknown.
func tcpMem() int64 {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "TCP: ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i += 2 {
			if f[i] == "mem" {
				pages, _ := strconv.ParseInt(f[i+1], 10, 64)
				return pages * int64(os.Getpagesize())
			}
		}
	}
	return 0
}

// resumeStalled tells the workers to let their stalled sockets read again
// and waits until each of them has ended or nothing changed for a second
// (at most -drain): a socket the server closed then reads what was left in
// its buffers and the close frame, if the server managed to send one.
func (s *session) resumeStalled(ctx context.Context) error {
	for _, w := range s.workers {
		if _, err := io.WriteString(w.stdin, "resume\n"); err != nil {
			return fmt.Errorf("worker: %w", err)
		}
	}
	s.setLabel("stalled sockets reading")
	deadline := time.Now().Add(s.o.drain)
	last, lastChange := int64(-1), time.Now()
	for time.Now().Before(deadline) {
		p := progress(s.workers)
		if p.StalledClosed >= s.res.StalledConnected {
			break
		}
		if p.StalledClosed != last {
			last, lastChange = p.StalledClosed, time.Now()
		} else if time.Since(lastChange) > time.Second {
			break
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return sleep(ctx, 300*time.Millisecond) // progress lines lag by up to 250 ms
}

// serverCloses returns Herald's count of the sockets it closed, by close
// code (herald_closes_total on /metrics), summed over the replicas; nil
// for the baseline, which counts nothing, or when a replica cannot say.
func (s *session) serverCloses(ctx context.Context) map[int]int64 {
	if s.o.target != "herald" {
		return nil
	}
	sum := map[int]int64{}
	client := &http.Client{Timeout: 5 * time.Second}
	for _, u := range s.srv.urls {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/metrics", nil)
		if err != nil {
			return nil
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil
		}
		err = scanCloses(resp.Body, sum)
		resp.Body.Close()
		if err != nil {
			return nil
		}
	}
	return sum
}

// scanCloses adds the herald_closes_total{code="N"} samples of a metrics
// page to sum.
func scanCloses(r io.Reader, sum map[int]int64) error {
	const prefix = `herald_closes_total{code="`
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		code, value, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		c, err1 := strconv.Atoi(code)
		v, err2 := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("metrics: bad line %q", sc.Text())
		}
		sum[c] += int64(v)
	}
	return sc.Err()
}

// addCounts adds b to a; subCounts subtracts it and returns a.
func addCounts(a, b map[int]int64) {
	for k, v := range b {
		a[k] += v
	}
}

func subCounts(a, b map[int]int64) map[int]int64 {
	for k, v := range b {
		a[k] -= v
	}
	return a
}

// nonZero returns m without its zero counts, nil when none is left.
func nonZero(m map[int]int64) map[int]int64 {
	out := map[int]int64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
