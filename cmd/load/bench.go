package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// benchLoads returns the suite `load bench` runs, each load for Herald and
// the baseline in turn. The sizes fit the whole suite in under five minutes
// on two cores.
func benchLoads() [][]string {
	return [][]string{
		{"-scenario", "idle", "-conns", "10000", "-duration", "2s"},
		{"-scenario", "broadcast", "-conns", "5000", "-rate", "10", "-duration", "6s", "-settle", "1s"},
		{"-scenario", "broadcast", "-conns", "5000", "-rate", "20", "-duration", "6s", "-settle", "1s"},
		{"-scenario", "personal", "-conns", "10000", "-rate", "5000", "-duration", "6s", "-settle", "1s"},
		{"-scenario", "personal", "-conns", "10000", "-rate", "20000", "-duration", "6s", "-settle", "1s"},
		{"-scenario", "storm", "-conns", "10000", "-dialers", "128", "-settle", "0s"},
		{"-scenario", "ceiling", "-conns", "2000", "-publisher", "batch", "-rate", "5000", "-duration", "3s", "-settle", "0s", "-ceiling-steps", "10"},
	}
}

// namedLoads are loads that `load bench` runs only when -only names their
// scenario: each would take the suite past five minutes.
func namedLoads() [][]string {
	return [][]string{
		{"-scenario", "overload", "-conns", "5000", "-rate", "200", "-duration", "10s", "-settle", "1s"},
	}
}

// runBench runs the suite -runs times, printing each run's JSON line as it
// comes (and appending it to -out), then the table of medians.
func runBench(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	runs := fs.Int("runs", 1, "times to run the whole suite (the table shows medians)")
	out := fs.String("out", "", "also append the JSON lines to this file")
	only := fs.String("only", "", "comma-separated scenarios to run; empty: all but overload, which runs only when named")
	targets := fs.String("targets", "herald,baseline", "targets, in the order each load runs them")
	common := fs.String("args", "", "extra flags for every run, e.g. \"-workers 2 -sources 2\"")
	gw := fs.String("gateway-bin", "bin/gateway", "the gateway binary")
	base := fs.String("baseline-bin", "bin/baseline", "the baseline binary")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var file *os.File
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		file = f
	}
	start := time.Now()
	var results []result
	failures := 0
	suite := benchLoads()
	if *only != "" {
		suite = append(suite, namedLoads()...)
	}
	for run := range *runs {
		for _, load := range suite {
			if *only != "" && !strings.Contains(","+*only+",", ","+load[1]+",") {
				continue
			}
			for _, target := range strings.Split(*targets, ",") {
				a := append([]string{"-target", target, "-gateway-bin", *gw, "-baseline-bin", *base}, load...)
				a = append(a, strings.Fields(*common)...)
				o, err := parse(a, getenv)
				if err != nil {
					return err
				}
				fmt.Fprintf(stderr, "load: bench run %d/%d: %s %s (%.0fs in)\n", run+1, *runs, target, strings.Join(load, " "), time.Since(start).Seconds())
				res, err := runOnce(ctx, o, stderr)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err != nil {
					fmt.Fprintf(stderr, "load: %s %s failed: %v\n", target, load[1], err)
					failures++
					continue
				}
				line, _ := json.Marshal(res.rounded())
				fmt.Fprintf(stdout, "%s\n", line)
				if file != nil {
					fmt.Fprintf(file, "%s\n", line)
				}
				results = append(results, res)
			}
		}
	}
	fmt.Fprint(stdout, table(results))
	fmt.Fprintf(stdout, "\n%d runs in %.0f s; load average at the start of each: %s\n", len(results), time.Since(start).Seconds(), loads(results))
	if failures > 0 {
		return fmt.Errorf("%d runs failed", failures)
	}
	return nil
}

func loads(rs []result) string {
	var s []string
	for _, r := range rs {
		s = append(s, fmt.Sprintf("%.1f", r.LoadAvg))
	}
	return strings.Join(s, " ")
}
