package metrics

import "github.com/prometheus/client_golang/prometheus"

// Guards counts what the gateway's protections against slow and flooding
// clients did.
type Guards struct {
	HTTPEvictions prometheus.Counter // HTTP connections closed to make room under HERALD_MAX_HTTP_CONNS
	Floods        prometheus.Counter // sockets closed with 4008 for sending frames or bytes over their budget
}

// NewGuards creates the collectors and registers them, plus a gauge
// reading httpConns (connections not upgraded to WebSocket), on reg.
func NewGuards(reg prometheus.Registerer, httpConns func() float64) *Guards {
	g := &Guards{
		HTTPEvictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_http_evictions_total",
			Help: "HTTP connections (not WebSockets) closed because HERALD_MAX_HTTP_CONNS was reached: the stalest goes.",
		}),
		Floods: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_client_floods_total",
			Help: "Client sockets closed with 4008 for sending WebSocket frames or bytes over their budget.",
		}),
	}
	reg.MustRegister(g.HTTPEvictions, g.Floods, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "herald_http_connections", Help: "Open HTTP connections not upgraded to WebSocket.",
	}, httpConns))
	return g
}
