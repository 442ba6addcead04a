// Command gateway runs a Herald gateway replica: WebSocket connections from
// browsers, the publish and session APIs, and delivery of events published
// anywhere in the cluster. Without REDIS_URL it runs single-node in memory
// with the demo page.
package main

import (
	"context"
	"fmt"

	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "herald:", err)
		os.Exit(1)
	}
}
