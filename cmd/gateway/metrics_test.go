package main

import (
	"net/http"
	"testing"
)

// TestDeliveryMetrics: herald_delivery_latency_seconds counts one sample
// per socket write of live events and none for a replay; the send-queue
// gauges are there and empty once everything was written.
func TestDeliveryMetrics(t *testing.T) {
	for _, mode := range []string{"redis", "memory"} {
		t.Run(mode, func(t *testing.T) {
			r := modeReplica(t, mode, nil)
			sid := r.newSession(t, "m")
			cl := dial(t, r.wsURL(""), bearerHeader(sid))
			w := cl.nextOf("welcome")
			cl.c.CloseNow()
			missed := []string{r.publish(t, "user:m", "n", 1), r.publish(t, "user:m", "n", 2)}

			latency := r.metric(t, "herald_delivery_latency_seconds_count")
			writes := r.metric(t, "herald_send_queue_depth_frames_count")
			cl = dial(t, r.wsURL("?since="+w.str("last")), bearerHeader(sid))
			cl.nextOf("welcome")
			equalIDs(t, "replayed", cl.eventIDs(2), missed)
			// Each live event is published once the previous one arrived,
			// so each goes out in a write of its own.
			const live = 3
			for i := range live {
				id := r.publish(t, "user:m", "n", 10+i)
				equalIDs(t, "live", cl.eventIDs(1), []string{id})
			}
			eventually(t, "latency samples", func() bool {
				return r.metric(t, "herald_delivery_latency_seconds_count") >= latency+live
			})
			cl.noEventBeforePong()
			if got := r.metric(t, "herald_delivery_latency_seconds_count"); got != latency+live {
				t.Errorf("herald_delivery_latency_seconds_count moved by %v, want %d: one per live event, none for the replay", got-latency, live)
			}
			if got := r.metric(t, "herald_send_queue_depth_frames_count"); got < writes+live {
				t.Errorf("herald_send_queue_depth_frames_count moved by %v, want at least %d", got-writes, live)
			}
			for _, g := range []string{"herald_send_queue_frames", "herald_send_queue_bytes", "herald_send_queue_max_fill_ratio"} {
				if got := r.metric(t, g); got != 0 {
					t.Errorf("%s = %v with every frame written, want 0", g, got)
				}
			}
		})
	}
}

// TestPublishMetrics: every publish call is one batch of its events in
// herald_publish_batch_events and one ok script call; without Redis there
// is no script to measure.
func TestPublishMetrics(t *testing.T) {
	const (
		scripts = `herald_publish_script_seconds_count{outcome="ok"}`
		failed  = `herald_publish_script_seconds_count{outcome="error"}`
		batches = "herald_publish_batch_events_count"
		evs     = "herald_publish_batch_events_sum"
	)
	r := modeReplica(t, "redis", nil)
	tests := []struct {
		name   string
		path   string
		body   any
		events float64
	}{
		{"one event", "/api/publish", map[string]any{"channel": "user:p", "event": "n", "data": 1}, 1},
		{"a batch of three", "/api/publish/batch", map[string]any{"items": []map[string]any{
			{"channel": "user:p", "event": "n", "data": 1},
			{"channel": "public:p", "event": "n", "data": 2},
			{"channel": "user:q", "event": "n", "data": 3},
		}}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s0, f0, b0, e0 := r.metric(t, scripts), r.metric(t, failed), r.metric(t, batches), r.metric(t, evs)
			if st, body := r.api(t, "POST", tt.path, testAPIKey, tt.body); st != http.StatusAccepted {
				t.Fatalf("publish: %d %v", st, body)
			}
			// The batch is observed before the publish returns.
			if got := r.metric(t, scripts) - s0; got != 1 {
				t.Errorf("ok script batches moved by %v, want 1", got)
			}
			if got := r.metric(t, failed) - f0; got != 0 {
				t.Errorf("failed script batches moved by %v, want 0", got)
			}
			if got := r.metric(t, batches) - b0; got != 1 {
				t.Errorf("%s moved by %v, want 1", batches, got)
			}
			if got := r.metric(t, evs) - e0; got != tt.events {
				t.Errorf("%s moved by %v, want %v", evs, got, tt.events)
			}
		})
	}

	t.Run("memory mode has no script", func(t *testing.T) {
		m := modeReplica(t, "memory", nil)
		m.publish(t, "user:p", "n", 1)
		if got := m.metric(t, scripts); got != -1 {
			t.Errorf("%s = %v without Redis, want it absent", scripts, got)
		}
	})
}
