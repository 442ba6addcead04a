// Command load is Herald's load tool: it opens many WebSocket connections
// to one or more gateways, publishes events to their users at a steady
// rate through the HTTP API, and reports connect times, delivery latency
// (publish call to frame received), losses and the gateways' memory per
// socket. It targets loopback gateways and stops by itself after its
// duration.
//
//	load -gateways http://127.0.0.1:8081,http://127.0.0.1:8082 -conns 10000 -users 1000 -rate 200 -duration 30s
//
// The API key comes from HERALD_API_KEY (not a flag, to keep it out of the
// process list).
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
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}
