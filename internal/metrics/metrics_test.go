package metrics

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/heraldgw/herald/internal/hub"
)

// sample is one metric read back from a registry: a histogram's count and
// sum, or a gauge's value in sum.
type sample struct {
	count uint64
	sum   float64
}

// read returns the sample of the metric name whose labels include label
// (a value; "" for none) in reg.
func read(t *testing.T, reg *prometheus.Registry, name, label string) sample {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && !hasLabelValue(m.GetLabel(), label) {
				continue
			}
			if h := m.GetHistogram(); h != nil {
				return sample{h.GetSampleCount(), h.GetSampleSum()}
			}
			return sample{sum: m.GetGauge().GetValue()}
		}
	}
	t.Fatalf("%s{%s} not registered", name, label)
	return sample{}
}

func hasLabelValue(labels []*dto.LabelPair, v string) bool {
	for _, l := range labels {
		if l.GetValue() == v {
			return true
		}
	}
	return false
}

func TestDeliveryWritten(t *testing.T) {
	now := time.Now().UnixMilli()
	tests := []struct {
		name        string
		w           hub.Write
		latency     uint64  // samples added to herald_delivery_latency_seconds
		latencySum0 bool    // the sample is 0 (a publish time ahead of the clock)
		depthSum    float64 // added to herald_send_queue_depth_frames' sum
	}{
		{"a live event", hub.Write{Frames: 1, Oldest: now - 5}, 1, false, 1},
		{"a backlog with events", hub.Write{Frames: 40, Oldest: now - 500}, 1, false, 40},
		{"no live event", hub.Write{Frames: 3}, 0, true, 3},
		{"a publish clock ahead of ours", hub.Write{Frames: 1, Oldest: now + 60_000}, 1, true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			d := NewDelivery(reg, func() hub.Queued { return hub.Queued{} })
			d.Written(tt.w)
			lat := read(t, reg, "herald_delivery_latency_seconds", "")
			if lat.count != tt.latency {
				t.Errorf("latency samples: got %d, want %d", lat.count, tt.latency)
			}
			if tt.latencySum0 != (lat.sum == 0) {
				t.Errorf("latency sum: got %v, want zero: %v", lat.sum, tt.latencySum0)
			}
			if depth := read(t, reg, "herald_send_queue_depth_frames", ""); depth.count != 1 || depth.sum != tt.depthSum {
				t.Errorf("depth: got %d samples summing to %v, want 1 summing to %v", depth.count, depth.sum, tt.depthSum)
			}
		})
	}
}

func TestQueueGaugesReadTheHub(t *testing.T) {
	reg := prometheus.NewRegistry()
	q := hub.Queued{Frames: 7, Bytes: 900, MaxFill: 0.5}
	NewDelivery(reg, func() hub.Queued { return q })
	for name, want := range map[string]float64{
		"herald_send_queue_frames":         7,
		"herald_send_queue_bytes":          900,
		"herald_send_queue_max_fill_ratio": 0.5,
	} {
		if got := read(t, reg, name, "").sum; got != want {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
	}
}

func TestPublishBatch(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := NewPublish(reg)
	for _, outcome := range []string{"ok", "error"} { // both exist before any batch
		if got := read(t, reg, "herald_publish_script_seconds", outcome).count; got != 0 {
			t.Errorf("outcome %s: %d samples before any batch", outcome, got)
		}
	}
	p.Batch(5, time.Millisecond, nil)
	p.Batch(256, time.Millisecond, nil)
	p.Batch(1, time.Second, errors.New("LOADING"))
	if got := read(t, reg, "herald_publish_script_seconds", "ok").count; got != 2 {
		t.Errorf("ok batches: got %d, want 2", got)
	}
	if got := read(t, reg, "herald_publish_script_seconds", "error").count; got != 1 {
		t.Errorf("failed batches: got %d, want 1", got)
	}
	if got := read(t, reg, "herald_publish_batch_events", ""); got.count != 3 || got.sum != 262 {
		t.Errorf("events: got %d batches of %v events, want 3 of 262", got.count, got.sum)
	}
}

// BenchmarkWritten is what the gateway adds to every socket write
// (hub.Config.OnWrite), from every writer goroutine at once.
func BenchmarkWritten(b *testing.B) {
	d := NewDelivery(prometheus.NewRegistry(), func() hub.Queued { return hub.Queued{} })
	w := hub.Write{Frames: 1, Oldest: time.Now().UnixMilli()}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			d.Written(w)
		}
	})
}
