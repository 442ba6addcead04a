// Package metrics defines the gateway's Prometheus collectors, registered on
// a registry the caller passes in (never the global one). Labels carry only
// bounded, non-secret values: codes, reasons and sources.
package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldgw/herald/internal/broker"
)

// Metrics holds the gateway's collectors.
type Metrics struct {
	EventsIn        *prometheus.CounterVec // events accepted for publishing, by source
	EventsDelivered prometheus.Counter     // frames queued to sockets
	Closes          *prometheus.CounterVec // sockets closed by the server, by close code
	Refusals        *prometheus.CounterVec // connects refused before the upgrade, by reason
	Connects        prometheus.Counter     // sockets accepted, SSE streams included
	SSEConnects     prometheus.Counter     // SSE streams accepted
	ClientErrors    *prometheus.CounterVec // error frames sent to clients, by code
	Evictions       prometheus.Counter     // sockets removed from an effect that belongs to another user
	Gaps            prometheus.Counter     // gap notices: channels whose lost events could not be refilled
	SessionChecks   prometheus.Counter     // sessions of open sockets re-checked in the backend
}

// New creates the collectors and registers them, plus gauges reading conns
// and channels, on reg.
func New(reg prometheus.Registerer, conns, channels func() float64) *Metrics {
	m := &Metrics{
		EventsIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_events_in_total", Help: "Events accepted for publishing, by source (http, dev, classic).",
		}, []string{"source"}),
		EventsDelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_events_delivered_total", Help: "Event frames queued to client sockets on this replica.",
		}),
		Closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_closes_total", Help: "Client connections closed by the server, by WebSocket close code (SSE streams get it in a close frame).",
		}, []string{"code"}),
		Refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_refusals_total", Help: "Connects (WebSocket or SSE) refused before the upgrade or stream, by reason.",
		}, []string{"reason"}),
		Connects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_connects_total", Help: "Client connections accepted: WebSockets and SSE streams.",
		}),
		SSEConnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_sse_connects_total", Help: "SSE streams accepted (the WebSocket fallback), also counted in herald_connects_total.",
		}),
		ClientErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_client_errors_total", Help: "Error frames sent to clients, by code.",
		}, []string{"code"}),
	}
	m.Evictions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_evictions_total", Help: "Sockets unsubscribed from an effect channel whose events belong to another user.",
	})
	m.Gaps = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_gaps_total", Help: "Gap notices: channels whose events were lost on their way to this replica and could not be refilled from history.",
	})
	m.SessionChecks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "herald_session_checks_total", Help: "Sessions of open sockets re-checked in the backend (paced by HERALD_SESSION_CHECK, bounded by HERALD_SESSION_CHECK_RATE).",
	})
	reg.MustRegister(m.EventsIn, m.EventsDelivered, m.Closes, m.Refusals, m.Connects, m.SSEConnects, m.ClientErrors, m.Evictions, m.Gaps, m.SessionChecks,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herald_connections", Help: "Open client sockets on this replica.",
		}, conns),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herald_channels", Help: "Channels with at least one local subscriber.",
		}, channels),
	)
	return m
}

// Closed counts one server-side close with code.
func (m *Metrics) Closed(code int) { m.Closes.WithLabelValues(strconv.Itoa(code)).Inc() }

// RegisterBroker registers the Redis broker's counters on reg, read from
// stats at every scrape.
func RegisterBroker(reg prometheus.Registerer, stats func() broker.RedisStats) {
	reg.MustRegister(brokerCollector(stats))
}

type brokerCollector func() broker.RedisStats

// brokerCounters names each counter of broker.RedisStats.
var brokerCounters = []struct {
	desc  *prometheus.Desc
	value func(broker.RedisStats) uint64
}{
	{counterDesc("herald_pubsub_received_total", "Pub/sub messages read from Redis, classic ones included."), func(s broker.RedisStats) uint64 { return s.Received }},
	{counterDesc("herald_pubsub_delivered_total", "Event frames handed to the hub, refilled ones included."), func(s broker.RedisStats) uint64 { return s.Delivered }},
	{counterDesc("herald_pubsub_ignored_total", "Pub/sub messages of channels without local subscribers."), func(s broker.RedisStats) uint64 { return s.Ignored }},
	{counterDesc("herald_pubsub_duplicates_total", "Frames dropped because their id was already delivered."), func(s broker.RedisStats) uint64 { return s.Duplicates }},
	{counterDesc("herald_pubsub_resubscribes_total", "Resubscriptions after the pub/sub connection reconnected."), func(s broker.RedisStats) uint64 { return s.Resubscribes }},
	{counterDesc("herald_pubsub_replacements_total", "Pub/sub connections replaced: a missed probe, a moved slot, a node that confirms nothing."), func(s broker.RedisStats) uint64 { return s.Replacements }},
	{counterDesc("herald_pubsub_probes_late_total", "Pub/sub probes not seen in time on a connection still delivering (a busy delivery loop, not a dead connection): kept, not replaced."), func(s broker.RedisStats) uint64 { return s.ProbesLate }},
	{counterDesc("herald_pubsub_moves_total", "Pub/sub connections a Redis Cluster unsubscribed because their slot moved (rebuilt on the new node)."), func(s broker.RedisStats) uint64 { return s.Moves }},
	{counterDesc("herald_redis_primary_changes_total", "Redis primary changes seen under Sentinel (every pub/sub connection moved and refilled)."), func(s broker.RedisStats) uint64 { return s.PrimaryChanges }},
	{counterDesc("herald_outbox_flushed_total", "Events the periodic outbox flush published (left behind by a failed flush or a stopped publisher)."), func(s broker.RedisStats) uint64 { return s.OutboxFlushed }},
	{counterDesc("herald_refill_events_total", "Events delivered from history after a reconnect."), func(s broker.RedisStats) uint64 { return s.Refilled }},
	{counterDesc("herald_refill_gaps_total", "Refills that found events gone from history, or gave up."), func(s broker.RedisStats) uint64 { return s.RefillGaps }},
	{counterDesc("herald_refill_failures_total", "Baseline or history reads that failed and were retried."), func(s broker.RedisStats) uint64 { return s.RefillFailures }},
	{counterDesc("herald_refill_pending_dropped_total", "Live frames dropped while a refill held too many (read again from history)."), func(s broker.RedisStats) uint64 { return s.PendingDropped }},
}

var connectionsDesc = prometheus.NewDesc("herald_pubsub_connections",
	"Redis pub/sub connections of this replica: one, or on a cluster one per partition with local channels and one for the classic ingress.", nil, nil)

var classicDesc = prometheus.NewDesc("herald_classic_messages_total",
	"Classic effect:complete messages, by outcome: converted, invalid, dropped (queue full), failed (publish failed).",
	[]string{"outcome"}, nil)

func counterDesc(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }

func (c brokerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, b := range brokerCounters {
		ch <- b.desc
	}
	ch <- classicDesc
	ch <- connectionsDesc
}

func (c brokerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c()
	for _, b := range brokerCounters {
		ch <- prometheus.MustNewConstMetric(b.desc, prometheus.CounterValue, float64(b.value(s)))
	}
	ch <- prometheus.MustNewConstMetric(connectionsDesc, prometheus.GaugeValue, float64(s.Connections))
	for outcome, v := range map[string]uint64{
		"converted": s.ClassicConverted, "invalid": s.ClassicInvalid,
		"dropped": s.ClassicDropped, "failed": s.ClassicFailed,
	} {
		ch <- prometheus.MustNewConstMetric(classicDesc, prometheus.CounterValue, float64(v), outcome)
	}
}
