package main

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestREADMEClassicPublish runs the README's classic `redis-cli PUBLISH
// effect:complete` line as a reader pastes it (into bash, only the port
// changed to the test's Redis): the user's socket receives the completion.
func TestREADMEClassicPublish(t *testing.T) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		msg := "redis-cli not installed: run `make test` (scripts/ensure-deps.sh installs redis-server, which brings it)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^redis-cli -p 6390 PUBLISH effect:complete .*$`).Find(readme)
	if line == nil {
		t.Fatal("README.md has no `redis-cli -p 6390 PUBLISH effect:complete` line")
	}
	srv, rs := cluster(t, 1, nil)
	_, port, _ := strings.Cut(srv.Addr, ":")
	script := strings.Replace(string(line), "redis-cli -p 6390", cli+" -p "+port, 1)

	cl := dial(t, rs[0].wsURL(""), bearerHeader(rs[0].newSession(t, "42")))
	cl.nextOf("welcome")
	// PUBLISH prints how many subscribers heard it: 0 until the gateway's
	// classic subscription is in place, which readiness does not wait for.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("bash", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
		if n := string(bytes.TrimSpace(out)); n != "0" {
			if n != "1" {
				t.Fatalf("PUBLISH answered %q, want 1 (one gateway listening)", n)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no gateway heard the classic channel within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ev := cl.nextOf("event")
	data, _ := ev["data"].(map[string]any)
	if ev.str("channel") != "user:42" || ev.str("event") != "effect.complete" ||
		data["userEffectId"] != "6f1c2b8e-3d4a-4e5f-9a0b-1c2d3e4f5a6b" || data["timestamp"] == nil {
		t.Errorf("got %v, want the README's completion on user:42", ev)
	}
	if logs := rs[0].logs.String(); strings.Contains(logs, "classic effect:complete message ignored") {
		t.Errorf("the gateway ignored the README's message:\n%s", logs)
	}
}
