// Command worker is Herald's example job worker. It renders effects queued
// on the job stream and announces each result to the user who asked for it,
// through Herald.
//
//	worker publish --effect ID [--user U] [--url URL]   publish one effect-complete event
//	worker run [--work 500ms] [--claim-after 30s]        consume and process jobs
//	           [--catalog FILE|URL]                        only the effect kinds a catalog defines
//	worker demo [--rate 10] [--duration 10s] [--users 10 | --user U] enqueue synthetic jobs
//
// Redis is named by REDIS_URL (or --redis-url). publish and run announce
// results through Redis, or through a gateway's HTTP API with --gateway and
// an API key from HERALD_API_KEY or HERALD_API_KEYS (or --api-key). Run "worker CMD -h" for the
// flags of each command.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
