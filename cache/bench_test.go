package cache_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/heraldgw/herald/cache"
	"github.com/heraldgw/herald/internal/redistest"
)

// BenchmarkHit measures the hit path of GetOrLoad against a redis-server
// on loopback: "GET+json" is the floor (a bare go-redis GET and
// json.Unmarshal of the same value), "GetOrLoad" a plain cache-aside hit
// (one GET), "GetOrLoad-Stale" a hit with a stale window (GET and PTTL in
// one pipeline). The -parallel variants run GOMAXPROCS×4 goroutines.
// Figures are in docs/BENCHMARKS.md.
func BenchmarkHit(b *testing.B) {
	rdb := redistest.Start(b).Client()
	c, _ := newCache(b, rdb, cache.Config[profile]{Name: "bench"})
	ctx := context.Background()
	v := profile{Name: "Ada Lovelace", Roles: []string{"admin", "editor"}}
	window := 10 * time.Minute
	if err := c.Set(ctx, "plain", v, time.Hour); err != nil {
		b.Fatal(err)
	}
	if err := c.Set(ctx, "swr", v, time.Hour, cache.Stale(window)); err != nil {
		b.Fatal(err)
	}
	load := func(context.Context) (profile, error) {
		b.Fatal("load called on the hit path")
		return profile{}, nil
	}
	cases := []struct {
		name string
		op   func() error
	}{
		{"GET+json", func() error {
			raw, err := rdb.Get(ctx, c.RedisKey("plain")).Bytes()
			if err != nil {
				return err
			}
			var p profile
			return json.Unmarshal(raw, &p)
		}},
		{"GetOrLoad", func() error {
			_, err := c.GetOrLoad(ctx, "plain", time.Hour, load)
			return err
		}},
		{"GetOrLoad-Stale", func() error {
			_, err := c.GetOrLoad(ctx, "swr", time.Hour, load, cache.Stale(window))
			return err
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := tc.op(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	for _, tc := range cases {
		b.Run(tc.name+"-parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := tc.op(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
