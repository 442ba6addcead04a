package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
)

// TestMain lets the test binary stand in for the load tool's worker
// processes, which the tool starts by running its own executable.
func TestMain(m *testing.M) {
	if os.Getenv(workerRoleEnv) == "worker" {
		if err := runWorker(context.Background(), os.Stdin, os.Stdout, ""); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestParseRefusesNonLoopbackTargets(t *testing.T) {
	env := func(k string) string {
		if k == "HERALD_API_KEY" {
			return "k"
		}
		return ""
	}
	tests := []struct {
		gateways string
		ok       bool
	}{
		{"http://127.0.0.1:8080", true},
		{"http://localhost:8080,http://127.0.0.2:9", true},
		{"http://[::1]:8080", true},
		{"http://10.0.0.5:8080", false},
		{"http://example.com", false},
		{"http://127.0.0.1:8080,http://192.168.1.2:8080", false},
	}
	for _, tt := range tests {
		_, err := parse([]string{"-gateways", tt.gateways}, env)
		if (err == nil) != tt.ok {
			t.Errorf("-gateways %s: err %v, want ok %v", tt.gateways, err, tt.ok)
		}
	}
	if _, err := parse([]string{"-gateways", "http://127.0.0.1:1", "-redis", "10.1.1.1:6379"}, env); err == nil {
		t.Error("-redis 10.1.1.1:6379: want an error")
	}
	if _, err := parse([]string{"-gateways", "http://127.0.0.1:1"}, func(string) string { return "" }); err == nil {
		t.Error("running Herald gateways without HERALD_API_KEY: want an error")
	}
	for _, args := range [][]string{{"-shards", "3", "-target", "baseline"}, {"-shards", "3", "-gateways", "http://127.0.0.1:1"}, {"-shards", "-1"}} {
		if _, err := parse(args, env); err == nil {
			t.Errorf("%v: want an error", args)
		}
	}
	if o, err := parse([]string{"-shards", "3"}, env); err != nil || o.shards != 3 {
		t.Errorf("-shards 3: %v, %v", o.shards, err)
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	for us := int64(1); us <= 10000; us++ {
		h.record(us)
	}
	s := h.take()
	for _, tt := range []struct{ q, want float64 }{{0.5, 5}, {0.99, 9.9}, {0.999, 9.99}} {
		if got := s.quantile(tt.q); got < tt.want*0.97 || got > tt.want*1.03 {
			t.Errorf("quantile %v: got %v ms, want %v ms ± 3 %%", tt.q, got, tt.want)
		}
	}
	if s.Max != 10000 || s.count() != 10000 {
		t.Errorf("max %d count %d, want 10000 10000", s.Max, s.count())
	}
	if again := h.take(); again.count() != 0 {
		t.Errorf("after take: %d samples, want 0", again.count())
	}
	var sum histSnap
	sum.add(s)
	sum.add(s)
	if sum.count() != 20000 || sum.quantile(0.5) != s.quantile(0.5) {
		t.Errorf("merged: count %d p50 %v, want 20000 %v", sum.count(), sum.quantile(0.5), s.quantile(0.5))
	}
}

func TestFrames(t *testing.T) {
	data := appendData(nil, 42, 1700000000123456789, 128)
	if len(data) != 128 || !json.Valid(data) {
		t.Fatalf("data %s: %d bytes, valid %v; want 128 valid", data, len(data), json.Valid(data))
	}
	ev := `{"type":"event","channel":"user:1","id":"1-0","event":"load","data":` + string(data) + `,"ts":1}`
	reordered := `{"type":"event","data":{"t":5,"s":7},"channel":"c"}`
	msg := ev + "\n" + `{"type":"welcome"}` + "\n" + reordered
	var got []string
	frames([]byte(msg), func(f []byte) {
		if seq, ts, ok := parseEvent(f); ok {
			got = append(got, strings.Join([]string{itoa(seq), itoa(ts)}, "@"))
		} else {
			got = append(got, frameType(f))
		}
	})
	want := []string{"42@1700000000123456789", "welcome", "7@5"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("got %v, want %v", got, want)
	}
	if ft := frameType([]byte(`{"type":"error","code":"forbidden","message":"no"}`)); ft != "error: forbidden no" {
		t.Errorf("error frame: got %q", ft)
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestSeqSet(t *testing.T) {
	var s seqSet
	for _, tt := range []struct {
		seq int64
		new bool
	}{{0, true}, {200, true}, {0, false}, {63, true}, {200, false}, {maxSeq + 1, true}, {maxSeq + 1, true}} {
		if got := s.add(tt.seq); got != tt.new {
			t.Errorf("add(%d) = %v, want %v", tt.seq, got, tt.new)
		}
	}
}

// fanOut is a minimal server of the baseline's shape, enough to drive the
// whole tool: /ws?user= greets and subscribes, a subscribe frame adds a
// channel, /api/publish fans out.
func fanOut(t *testing.T) *httptest.Server {
	var mu sync.Mutex
	users := map[string][]*websocket.Conn{} // channel → its sockets
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		ws.Write(r.Context(), websocket.MessageText, []byte(`{"type":"welcome"}`))
		mu.Lock()
		users["user:"+r.URL.Query().Get("user")] = append(users["user:"+r.URL.Query().Get("user")], ws)
		mu.Unlock()
		go func() {
			for {
				_, b, err := ws.Read(context.Background())
				if err != nil {
					return
				}
				var f struct{ Type, Channel string }
				if json.Unmarshal(b, &f) == nil && f.Type == "subscribe" {
					mu.Lock()
					users[f.Channel] = append(users[f.Channel], ws)
					mu.Unlock()
					ws.Write(context.Background(), websocket.MessageText, []byte(`{"type":"subscribed"}`))
				}
			}
		}()
	})
	mux.HandleFunc("POST /api/publish", func(w http.ResponseWriter, r *http.Request) {
		var p struct {
			Channel string          `json:"channel"`
			Data    json.RawMessage `json:"data"`
		}
		json.NewDecoder(r.Body).Decode(&p)
		frame := []byte(`{"type":"event","channel":"` + p.Channel + `","data":` + string(p.Data) + "}")
		mu.Lock()
		for _, ws := range users[p.Channel] {
			// Twice in one message, split by '\n': the second is a duplicate.
			ws.Write(r.Context(), websocket.MessageText, bytes.Join([][]byte{frame, frame}, []byte{'\n'}))
		}
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		mu.Lock()
		for _, conns := range users {
			for _, ws := range conns {
				ws.CloseNow()
			}
		}
		mu.Unlock()
		srv.Close()
	})
	return srv
}

func TestRunAgainstAFanOutServer(t *testing.T) {
	srv := fanOut(t)
	var out bytes.Buffer
	args := []string{"-target", "baseline", "-gateways", srv.URL, "-scenario", "personal",
		"-conns", "20", "-users", "10", "-rate", "100", "-duration", "500ms", "-settle", "0s",
		"-workers", "2", "-sources", "2", "-timeout", "60s"}
	if err := run(context.Background(), args, func(string) string { return "" }, nil, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	var res result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	if res.Connected != 20 || res.Events == 0 || res.Expected != 2*res.Events || res.Deliveries != res.Expected ||
		res.Dups != res.Deliveries || res.Lost != 0 || res.Errors != 0 {
		t.Errorf("got %+v; want 20 connected, every event delivered to the 2 sockets of its user once more as a duplicate", res)
	}
	if res.P50 <= 0 || res.ConnectsPerS <= 0 {
		t.Errorf("got p50 %v ms, %v connects/s; want both above 0", res.P50, res.ConnectsPerS)
	}

	var table bytes.Buffer
	if err := run(context.Background(), []string{"report"}, nil, &out, &table, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "| personal 20 × 100 ev/s | p99 ms |") {
		t.Errorf("report:\n%s\nwant a p99 row for the run", table.String())
	}
}

// TestOverloadCountsStalledSocketsApart runs the overload scenario against
// the fan-out server: the stalled sockets connect and subscribe but count
// in none of the healthy sockets' figures, and their number is reported.
func TestOverloadCountsStalledSocketsApart(t *testing.T) {
	srv := fanOut(t)
	var out bytes.Buffer
	args := []string{"-target", "baseline", "-gateways", srv.URL, "-scenario", "overload",
		"-conns", "6", "-stalled", "2", "-rate", "50", "-duration", "500ms", "-settle", "0s", "-drain", "1s",
		"-workers", "2", "-sources", "2", "-timeout", "60s"}
	if err := run(context.Background(), args, func(string) string { return "" }, nil, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	var res result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	if res.Connected != 6 || res.Stalled != 2 || res.StalledConnected != 2 || res.Events == 0 ||
		res.Expected != 6*res.Events || res.Deliveries != res.Expected || res.Lost != 0 || res.Closed != 0 || res.StalledClosed != 0 {
		t.Errorf("got %+v; want 6 healthy sockets getting every event, 2 stalled ones apart, none closed", res)
	}
	if res.PublishP99 <= 0 || res.RSSPeak != 0 {
		t.Errorf("publish p99 %v ms, RSS peak %d; want a publish latency, and no memory figure without -pids", res.PublishP99, res.RSSPeak)
	}
	var table bytes.Buffer
	if err := run(context.Background(), []string{"report"}, nil, &out, &table, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "| overload 6 × 50 ev/s + 2 stalled | stalled sockets closed |") {
		t.Errorf("report:\n%s\nwant a stalled row for the run", table.String())
	}
}

func TestScanCloses(t *testing.T) {
	page := `# HELP herald_closes_total Client connections closed by the server.
# TYPE herald_closes_total counter
herald_closes_total{code="1012"} 3
herald_closes_total{code="4009"} 50
herald_connections 5000
`
	sum := map[int]int64{4009: 1}
	if err := scanCloses(strings.NewReader(page), sum); err != nil {
		t.Fatal(err)
	}
	if len(sum) != 2 || sum[1012] != 3 || sum[4009] != 51 {
		t.Errorf("got %v, want 1012:3 4009:51", sum)
	}
}

func TestParseOverloadOptions(t *testing.T) {
	env := func(string) string { return "" }
	if o, err := parse([]string{"-scenario", "overload"}, env); err != nil || o.stalled != defaultStalled {
		t.Errorf("overload: stalled %d, %v; want %d", o.stalled, err, defaultStalled)
	}
	if o, err := parse([]string{"-scenario", "broadcast"}, env); err != nil || o.stalled != 0 {
		t.Errorf("broadcast: stalled %d, %v; want 0", o.stalled, err)
	}
	for _, args := range [][]string{
		{"-scenario", "broadcast", "-stalled", "5"},
		{"-memory", "-target", "baseline"},
		{"-memory", "-replicas", "2"},
		{"-memory", "-publisher", "go"},
	} {
		if _, err := parse(args, env); err == nil {
			t.Errorf("%v: want an error", args)
		}
	}
}
