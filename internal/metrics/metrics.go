// Package metrics defines the gateway's Prometheus collectors, registered on
// a registry the caller passes in (never the global one). Labels carry only
// bounded, non-secret values: codes, reasons and sources.
package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds the gateway's collectors.
type Metrics struct {
	EventsIn        *prometheus.CounterVec // events accepted for publishing, by source
	EventsDelivered prometheus.Counter     // frames queued to sockets
	Closes          *prometheus.CounterVec // sockets closed by the server, by close code
	Refusals        *prometheus.CounterVec // connects refused before the upgrade, by reason
	Connects        prometheus.Counter     // sockets accepted
	ClientErrors    *prometheus.CounterVec // error frames sent to clients, by code
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
			Name: "herald_closes_total", Help: "Client sockets closed by the server, by WebSocket close code.",
		}, []string{"code"}),
		Refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_refusals_total", Help: "WebSocket connects refused before the upgrade, by reason.",
		}, []string{"reason"}),
		Connects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_connects_total", Help: "WebSocket connections accepted.",
		}),
		ClientErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_client_errors_total", Help: "Error frames sent to clients, by code.",
		}, []string{"code"}),
	}
	reg.MustRegister(m.EventsIn, m.EventsDelivered, m.Closes, m.Refusals, m.Connects, m.ClientErrors,
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
