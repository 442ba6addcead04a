// Command baseline is the bare coder/websocket fan-out server that Herald's
// load tool (cmd/load) measures Herald against: the library's own ceiling
// on this machine. It has no authentication, no Redis, no history and no
// limits; what it does have is what any bare server needs: one reader and
// one writer goroutine per socket, a bounded queue between them, a write
// deadline, and each event encoded once for all of its subscribers.
//
// It speaks the same shape as Herald, so the load tool treats both alike:
//
//	GET  /ws?user=ID           WebSocket; subscribed to user:ID, greeted with {"type":"welcome"}
//	     client frame           {"type":"subscribe","ref":N,"channel":C} → {"type":"subscribed","ref":N,"channel":C}
//	POST /api/publish          {"channel","event","data"} → 202 {"id"}
//	POST /api/publish/batch    {"items":[…]} → 202 {"ids":[…]}
//	GET  /debug/pprof/…        net/http/pprof
//
// Event frames are Herald's: {"type":"event","channel":…,"id":…,"event":…,"data":…,"ts":…}.
//
//	baseline -addr 127.0.0.1:0
//
// prints "listening on ADDR" on stdout once it accepts connections.
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
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "baseline:", err)
		os.Exit(1)
	}
}
