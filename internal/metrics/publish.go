package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Publish measures the Redis publish path: the script calls that append
// events to history and publish them, group-committed in batches.
type Publish struct {
	Script *prometheus.HistogramVec // seconds per batch, by outcome (ok, error)
	Events prometheus.Histogram     // events per batch
}

// NewPublish creates the collectors and registers them on reg.
func NewPublish(reg prometheus.Registerer) *Publish {
	p := &Publish{
		Script: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "herald_publish_script_seconds",
			Help: "Seconds of Redis work per publish batch, by outcome (ok, error): the publish script call " +
				"(on a Redis Cluster one per partition, pipelined per node), retries included, and with " +
				"HERALD_REDIS_REPLICA_ACKS the WAIT for replicas and the outbox flush.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"outcome"}),
		Events: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "herald_publish_batch_events",
			Help: "Events per publish batch: publishes that arrive while script calls are under way " +
				"share the next call (group commit), up to 256 events (a single larger publish goes alone).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 9), // 1 … 256
		}),
	}
	p.Script.WithLabelValues("ok") // both outcomes show from the start
	p.Script.WithLabelValues("error")
	reg.MustRegister(p.Script, p.Events)
	return p
}

// Batch observes one publish batch (events.LogConfig.OnBatch).
func (p *Publish) Batch(events int, took time.Duration, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	p.Script.WithLabelValues(outcome).Observe(took.Seconds())
	p.Events.Observe(float64(events))
}
