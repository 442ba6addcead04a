package cache_test

import (
	"context"
	"log"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald/cache"
)

type Product struct {
	ID    string
	Price int
}

// loadProduct stands for a database query.
func loadProduct(ctx context.Context, id string) (Product, error) {
	return Product{ID: id, Price: 100}, nil
}

func Example() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	products, err := cache.New(rdb, prometheus.DefaultRegisterer, cache.Config[Product]{
		Name:   "products",
		Logger: slog.Default(),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer products.Close()
	ctx := context.Background()

	// Cache-aside with stale-while-revalidate: fresh for a minute, then
	// served stale for up to ten more while one process reloads it; tagged
	// so that a change of the catalogue drops every product at once.
	p, err := products.GetOrLoad(ctx, "product:42", time.Minute,
		func(ctx context.Context) (Product, error) { return loadProduct(ctx, "42") },
		cache.Stale(10*time.Minute), cache.Tags("catalogue", "vendor:7"))
	if err != nil {
		log.Fatal(err)
	}
	_ = p

	// After writing to the database: drop what depended on it.
	products.Delete(ctx, "product:42")
	products.InvalidateTags(ctx, "vendor:7")
	products.InvalidatePattern(ctx, "product:4*")
}
