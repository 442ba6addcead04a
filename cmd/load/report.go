package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// runReport prints the table of the JSON lines in the named files (stdin
// without any): the median of each figure per load and target, and
// Herald's figure divided by the baseline's.
func runReport(files []string, stdin io.Reader, stdout io.Writer) error {
	var results []result
	read := func(r io.Reader) error {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if !strings.HasPrefix(line, "{") {
				continue // a table or other text between the lines
			}
			var res result
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				return fmt.Errorf("bad line %.60q: %w", line, err)
			}
			results = append(results, res)
		}
		return sc.Err()
	}
	if len(files) == 0 {
		if err := read(stdin); err != nil {
			return err
		}
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		err = read(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	fmt.Fprint(stdout, table(results))
	return nil
}

// measure is one row of the table: a figure of one kind of load.
type measure struct {
	name string
	get  func(r result) float64
}

// measures lists the rows shown for each scenario.
func measures(scenario string) []measure {
	cpu := []measure{
		{"server CPU %", func(r result) float64 { return r.ServerCPU }},
		{"Redis CPU %", func(r result) float64 { return r.RedisCPU }},
	}
	switch scenario {
	case "idle":
		return []measure{
			{"RSS per socket, KB", func(r result) float64 { return float64(r.RSSPerConn) / 1000 }},
			{"server CPU %", func(r result) float64 { return r.ServerCPU }},
		}
	case "storm":
		return append([]measure{
			{"connects/s", func(r result) float64 { return r.ConnectsPerS }},
			{"connect p50 ms", func(r result) float64 { return r.ConnectP50 }},
			{"connect p99 ms", func(r result) float64 { return r.ConnectP99 }},
		}, cpu...)
	case "ceiling":
		return append([]measure{
			{"ceiling, events/s", func(r result) float64 { return r.Ceiling }},
			{"p99 ms at the ceiling", func(r result) float64 { return r.P99 }},
		}, cpu...)
	case "overload":
		return append([]measure{
			{"accepted events/s", func(r result) float64 { return r.EventsPerS }},
			{"publish call p99 ms", func(r result) float64 { return r.PublishP99 }},
			{"deliveries/s (healthy)", func(r result) float64 { return r.DeliveriesPerS }},
			{"p50 ms (healthy)", func(r result) float64 { return r.P50 }},
			{"p99 ms (healthy)", func(r result) float64 { return r.P99 }},
			{"healthy sockets closed", func(r result) float64 { return float64(r.Closed) }},
			{"stalled sockets closed", func(r result) float64 { return float64(r.StalledClosed) }},
			{"server RSS peak, MB", func(r result) float64 { return float64(r.RSSPeak) / 1e6 }},
		}, cpu...)
	}
	return append([]measure{
		{"accepted events/s", func(r result) float64 { return r.EventsPerS }},
		{"deliveries/s", func(r result) float64 { return r.DeliveriesPerS }},
		{"p50 ms", func(r result) float64 { return r.P50 }},
		{"p99 ms", func(r result) float64 { return r.P99 }},
		{"p99.9 ms", func(r result) float64 { return r.P999 }},
		{"lost + dups", func(r result) float64 { return float64(r.Lost + r.Dups) }},
	}, cpu...)
}

// loadName names a load so that runs of the same load group together.
func loadName(r result) string {
	var s string
	switch r.Scenario {
	case "idle", "storm":
		s = fmt.Sprintf("%s %d sockets", r.Scenario, r.Conns)
	case "ceiling":
		s = fmt.Sprintf("ceiling %d users", r.Users)
	case "overload":
		s = fmt.Sprintf("overload %d × %g ev/s + %d stalled", r.Conns, r.Rate, r.Stalled)
	default:
		s = fmt.Sprintf("%s %d × %g ev/s", r.Scenario, r.Conns, r.Rate)
	}
	if r.Publisher != "http" && r.Scenario != "idle" && r.Scenario != "storm" {
		s += " (" + r.Publisher + ")"
	}
	if r.Replicas > 1 {
		s += fmt.Sprintf(", %d replicas", r.Replicas)
	}
	if r.Shards > 0 {
		s += fmt.Sprintf(", cluster of %d", r.Shards)
	}
	if r.Memory {
		s += ", in memory"
	}
	return s
}

// table renders results as a Markdown table of medians.
func table(results []result) string {
	type key struct{ load, target string }
	groups := map[key][]result{}
	var loads []string
	scenario := map[string]string{}
	runs := 0
	for _, r := range results {
		k := key{loadName(r), r.Target}
		if !slices.Contains(loads, k.load) {
			loads = append(loads, k.load)
			scenario[k.load] = r.Scenario
		}
		groups[k] = append(groups[k], r)
		runs = max(runs, len(groups[k]))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| load | measure | Herald | baseline | Herald / baseline |\n| --- | --- | ---: | ---: | ---: |\n")
	for _, l := range loads {
		for _, m := range measures(scenario[l]) {
			h, hn := median(groups[key{l, "herald"}], m.get)
			base, bn := median(groups[key{l, "baseline"}], m.get)
			ratio := "–"
			if hn > 0 && bn > 0 && base != 0 {
				ratio = fmt.Sprintf("%.2f", h/base)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", l, m.name, figure(h, hn), figure(base, bn), ratio)
		}
	}
	fmt.Fprintf(&b, "\nMedians of up to %d runs per load and target.\n", runs)
	return b.String()
}

// median returns the median of get over rs and how many there were.
func median(rs []result, get func(result) float64) (float64, int) {
	if len(rs) == 0 {
		return 0, 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = get(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2], len(v)
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2, len(v)
}

func figure(v float64, n int) string {
	switch {
	case n == 0:
		return "–"
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
