package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/internal/hub"
)

// Delivery measures the way from a publish to the client sockets: how long
// events take, and how far sockets fall behind before the hub closes them
// with 4009.
type Delivery struct {
	Latency prometheus.Histogram // publish → written, once per socket write carrying live events
	Depth   prometheus.Histogram // frames a connection's writer took from its queue, once per write
}

// NewDelivery creates the collectors and registers them on reg, with gauges
// of the send queues read from queued at every scrape.
func NewDelivery(reg prometheus.Registerer, queued func() hub.Queued) *Delivery {
	d := &Delivery{
		Latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "herald_delivery_latency_seconds",
			Help: "Seconds from an event's publish to the end of the socket write that carried it, " +
				"observed once per write for the oldest live event in it (an upper bound for the others). " +
				"Events replayed from history on a resume or subscribe are not counted; events refilled after a Redis reconnect are (they were late). " +
				"The publish time is the event id's: Redis's clock, or this gateway's without REDIS_URL, " +
				"so the figure trusts the two clocks to agree (skew shifts every sample; negative ones count as 0); " +
				"ids have millisecond resolution.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		Depth: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "herald_send_queue_depth_frames",
			Help: "Frames a socket's writer found queued when it took its next batch, once per write: " +
				"1 while the socket keeps up; a socket whose queue reaches its limit is closed with 4009.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11), // 1 … 1024
		}),
	}
	reg.MustRegister(d.Latency, d.Depth, queueCollector(queued))
	return d
}

// Written observes one socket write (hub.Config.OnWrite).
func (d *Delivery) Written(w hub.Write) {
	d.Depth.Observe(float64(w.Frames))
	if w.Oldest > 0 {
		d.Latency.Observe(max(time.Since(time.UnixMilli(w.Oldest)).Seconds(), 0))
	}
}

// queueCollector reports a hub.Queued snapshot, taken once per scrape.
type queueCollector func() hub.Queued

var (
	queueFramesDesc = prometheus.NewDesc("herald_send_queue_frames",
		"Frames waiting in the send queues of all sockets at scrape time (not those being written).", nil, nil)
	queueBytesDesc = prometheus.NewDesc("herald_send_queue_bytes",
		"Bytes waiting in the send queues of all sockets at scrape time (not those being written).", nil, nil)
	queueFillDesc = prometheus.NewDesc("herald_send_queue_max_fill_ratio",
		"The fullest send queue of any socket at scrape time, as a fraction of the limit (bytes or frames, "+
			"whichever is nearer) at which the socket is closed with 4009.", nil, nil)
)

func (c queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueFramesDesc
	ch <- queueBytesDesc
	ch <- queueFillDesc
}

func (c queueCollector) Collect(ch chan<- prometheus.Metric) {
	q := c()
	ch <- prometheus.MustNewConstMetric(queueFramesDesc, prometheus.GaugeValue, float64(q.Frames))
	ch <- prometheus.MustNewConstMetric(queueBytesDesc, prometheus.GaugeValue, float64(q.Bytes))
	ch <- prometheus.MustNewConstMetric(queueFillDesc, prometheus.GaugeValue, q.MaxFill)
}
