// Command consumer is a program in another module that publishes to Herald
// through the public package github.com/heraldgw/herald, as an app would.
// It proves that the package is usable from outside the Herald module: no
// internal type is needed to call it.
//
// With REDIS_URL set it publishes through that Redis; otherwise through the
// gateway at HERALD_URL with the API key in HERALD_API_KEY.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	var p herald.Publisher
	if u := getenv("REDIS_URL"); u != "" {
		opts, err := redis.ParseURL(u)
		if err != nil {
			return fmt.Errorf("REDIS_URL: %w", err)
		}
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		p = herald.NewRedisPublisher(rdb, herald.RedisConfig{})
	} else {
		hp, err := herald.NewHTTPPublisher(getenv("HERALD_URL"), getenv("HERALD_API_KEY"), herald.HTTPConfig{})
		if err != nil {
			return err
		}
		p = hp
	}

	id, err := p.Publish(ctx, herald.UserChannel("42"), "greeting", map[string]string{"text": "hello from another module"})
	if err != nil {
		return fmt.Errorf("publish greeting: %w", err)
	}
	fmt.Fprintln(stdout, "greeting", id)

	ids, err := herald.PublishEffectComplete(ctx, p, herald.EffectComplete{
		UserID:       "42",
		UserEffectID: "6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b",
		ResultURL:    "https://cdn.example/results/6f1c2b8e.png",
	}, herald.IdempotencyKey("consumer-example-job-1"))
	var fe *herald.FieldError
	if errors.As(err, &fe) {
		return fmt.Errorf("bad event (field %s): %w", fe.Field, err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "effect.complete", ids[0], ids[1])
	return nil
}
