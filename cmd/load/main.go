// Command load is Herald's load tool. It measures what users feel: it
// starts the servers under test itself (Herald replicas with their own
// redis-server, or the bare baseline of bench/baseline) or takes the
// addresses of running ones, opens sockets from worker processes and
// several loopback source addresses, publishes at a steady rate, and
// reports publish→deliver latency (from a timestamp in each event's data),
// losses, duplicates, connect rate, the servers' memory per socket and CPU,
// and Redis's CPU as one JSON line on stdout. Progress goes to stderr. It
// runs against loopback addresses only and stops by itself.
//
//	load -scenario broadcast -target herald -conns 5000 -rate 20 -duration 10s
//	load -scenario personal -target baseline -conns 10000 -rate 5000
//	load -scenario overload -target herald -conns 5000 -rate 200 -duration 10s
//	load bench            # every scenario, Herald and baseline alternating, then a table
//	load report FILE…     # the table of JSON lines (medians per scenario and target)
//
// Scenarios:
//
//	idle       open the sockets, wait, report memory per socket
//	personal   one user per socket (user:{id}), events to the users in turn, -rate ev/s in all
//	broadcast  every socket on one public: channel, -rate ev/s to it
//	storm      authenticated connects as fast as -dialers allows (sessions made through the API first)
//	ceiling    the highest publish rate (personal shape) whose p99 stays ≤ -ceiling-p99
//	overload   broadcast at a rate the server cannot write in time, plus -stalled sockets
//	           that stop reading: publish latency, peak memory, which sockets were closed
//
// With -gateways the tool starts nothing; HERALD_API_KEY then holds the API
// key (not a flag, to keep it out of the process list).
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
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}
