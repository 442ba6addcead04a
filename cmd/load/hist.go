package main

import (
	"math/bits"
	"sync/atomic"
)

// Latencies are kept in microseconds in a log-linear histogram: exact below
// 64 µs, then 32 buckets per power of two (under 3 % error), so that the
// histograms of several worker processes can be added bucket by bucket.
const (
	histSub     = 64
	histBuckets = histSub + 32*40 // up to 2^46 µs
)

// histogram records latencies from many goroutines at once.
type histogram struct {
	counts [histBuckets]atomic.Uint64
	max    atomic.Int64
}

func bucketOf(us int64) int {
	if us < histSub {
		return int(max(us, 0))
	}
	e := bits.Len64(uint64(us)) - 6 // v>>e keeps the top 6 bits: 32..63
	return min(histSub+(e-1)*32+int(uint64(us)>>e)-32, histBuckets-1)
}

// valueOf is the middle of bucket i, in microseconds.
func valueOf(i int) int64 {
	if i < histSub {
		return int64(i)
	}
	e := (i-histSub)/32 + 1
	m := int64((i-histSub)%32 + 32)
	return m<<e + int64(1)<<e/2
}

func (h *histogram) record(us int64) {
	h.counts[bucketOf(us)].Add(1)
	for {
		m := h.max.Load()
		if us <= m || h.max.CompareAndSwap(m, us) {
			return
		}
	}
}

// take returns what was recorded since the last take and starts afresh.
func (h *histogram) take() histSnap {
	s := histSnap{Counts: map[int]uint64{}, Max: h.max.Swap(0)}
	for i := range h.counts {
		if n := h.counts[i].Swap(0); n > 0 {
			s.Counts[i] = n
		}
	}
	return s
}

// histSnap is a histogram at rest: sparse buckets, as sent between
// processes.
type histSnap struct {
	Counts map[int]uint64 `json:"c"`
	Max    int64          `json:"max"` // µs
}

func (s *histSnap) add(o histSnap) {
	if s.Counts == nil {
		s.Counts = map[int]uint64{}
	}
	for i, n := range o.Counts {
		s.Counts[i] += n
	}
	s.Max = max(s.Max, o.Max)
}

func (s histSnap) count() uint64 {
	var n uint64
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// quantile returns the latency in milliseconds below which the fraction q
// of the samples lie; 0 without samples.
func (s histSnap) quantile(q float64) float64 {
	n := s.count()
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i := range histBuckets {
		seen += s.Counts[i]
		if seen >= rank {
			return float64(min(valueOf(i), s.Max)) / 1000
		}
	}
	return float64(s.Max) / 1000
}
