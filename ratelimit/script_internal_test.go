package ratelimit

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"testing"
	"time"

	"github.com/heraldgw/herald/internal/redistest"
)

// TestScriptsIdempotent runs the sliding-window and acquire scripts twice
// with the same member, as go-redis does when it retries after a lost
// reply: the repeat is admitted again and counts once, even when the first
// run took the last slot.
func TestScriptsIdempotent(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()

	for i, member := range []string{"m1", "m2", "m2"} {
		v, err := slidingScript.Run(ctx, rdb, []string{"ratelimit:retry"}, 2, 60_000, member).Int64Slice()
		if err != nil {
			t.Fatal(err)
		}
		if v[0] != 1 || v[1] != 2 && i > 0 {
			t.Fatalf("call %d (%s): got %v, want admitted with 2 counted", i, member, v)
		}
	}
	v, _ := slidingScript.Run(ctx, rdb, []string{"ratelimit:retry"}, 2, 60_000, "m3").Int64Slice()
	if v[0] != 0 || v[1] != 2 {
		t.Fatalf("a new request after the retry: got %v, want refused with 2 counted", v)
	}

	for i, member := range []string{"r:1", "r:1"} {
		v, err := acquireScript.Run(ctx, rdb, []string{"herald:conns:retry"}, 1, member, liveScore, "").Int64Slice()
		if err != nil {
			t.Fatal(err)
		}
		if v[0] != 1 || v[1] != 1 {
			t.Fatalf("acquire %d: got %v, want admitted with 1 held", i, v)
		}
	}
}

// TestRedisLimitersReadNoLocalClock guards the rule that the Redis
// limiters decide on the Redis server's clock only: the files that
// implement them must not read the process's clock, so replicas whose
// clocks disagree cannot disagree about a limit. (Run's ticker only paces
// heartbeats; the expiry it writes comes from TIME. Acquire's skipped beat
// is paced the same way, by the clock of concurrency_pace.go.)
func TestRedisLimitersReadNoLocalClock(t *testing.T) {
	banned := map[string]bool{"Now": true, "Since": true, "Until": true}
	for _, file := range []string{"sliding.go", "bucket.go", "concurrency.go", "concurrency_heartbeat.go"} {
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "time" && banned[sel.Sel.Name] {
				t.Errorf("%s reads the local clock: time.%s", file, sel.Sel.Name)
			}
			return true
		})
	}
	_ = time.Now // the test itself may
}
