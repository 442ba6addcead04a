package cache

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are one cache's counters: the children, for its name, of vectors
// that every cache registered on the same registry shares.
type metrics struct {
	hits      prometheus.Counter // fresh values served from Redis
	misses    prometheus.Counter // reads that found nothing (or an undecodable entry)
	stale     prometheus.Counter // stale values served while a refresh was triggered
	loads     prometheus.Counter // load calls for misses, in this process
	refreshes prometheus.Counter // load calls for background refreshes, in this process

	loadErrors    prometheus.Counter // a miss's load failed (returned to the callers)
	refreshErrors prometheus.Counter // a refresh's load failed (the stale value stayed)
	redisErrors   prometheus.Counter // a Redis command failed
	codecErrors   prometheus.Counter // a value could not be encoded, or an entry decoded
}

// newMetrics registers the cache counter vectors on reg (reusing them when
// another cache registered them already) and returns the children labelled
// with name. A nil reg leaves the counters unregistered.
func newMetrics(reg prometheus.Registerer, name string) (*metrics, error) {
	counter := func(metric, help string) (*prometheus.CounterVec, error) {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metric, Help: help}, []string{"cache"})
		return register(reg, v)
	}
	var vecs [5]*prometheus.CounterVec
	for i, m := range []struct{ name, help string }{
		{"herald_cache_hits_total", "Fresh values served from the cache."},
		{"herald_cache_misses_total", "Reads that found no usable entry."},
		{"herald_cache_stale_total", "Stale values served while a background refresh was triggered."},
		{"herald_cache_loads_total", "Load calls made for misses by this process."},
		{"herald_cache_refreshes_total", "Load calls made for background refreshes by this process."},
	} {
		v, err := counter(m.name, m.help)
		if err != nil {
			return nil, err
		}
		vecs[i] = v
	}
	errs, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herald_cache_errors_total",
		Help: "Cache failures by kind: load (returned to callers), refresh (stale value kept), redis, codec.",
	}, []string{"cache", "kind"}))
	if err != nil {
		return nil, err
	}
	return &metrics{
		hits:          vecs[0].WithLabelValues(name),
		misses:        vecs[1].WithLabelValues(name),
		stale:         vecs[2].WithLabelValues(name),
		loads:         vecs[3].WithLabelValues(name),
		refreshes:     vecs[4].WithLabelValues(name),
		loadErrors:    errs.WithLabelValues(name, "load"),
		refreshErrors: errs.WithLabelValues(name, "refresh"),
		redisErrors:   errs.WithLabelValues(name, "redis"),
		codecErrors:   errs.WithLabelValues(name, "codec"),
	}, nil
}

// register registers c on reg, or returns the collector already registered
// under the same description, so that several caches share the vectors.
func register(reg prometheus.Registerer, c *prometheus.CounterVec) (*prometheus.CounterVec, error) {
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
			return existing, nil
		}
	}
	return nil, fmt.Errorf("register cache metrics: %w", err)
}
