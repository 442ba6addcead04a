package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/heraldgw/herald"
)

// Versions the consumer project installs from the npm registry, pinned so
// that a new release cannot change what the test means.
const (
	typescriptPkg = "typescript@5.9.3"
	esbuildPkg    = "esbuild@0.28.2"
	nodeTypesPkg  = "@types/node@20"
)

// TestNPMPackage is the client as a frontend team adopts it: web/ packed
// with `npm pack`, installed into an empty project, a TypeScript program
// type-checked against the package's types, then run against a real
// gateway three ways: as tsc emits it (Node resolves the package), bundled
// with esbuild, and importing the gateway's own /herald.js copied alone
// into a folder. Each run connects with one-time tickets, subscribes to an
// effect channel and receives a completion published through the HTTP API
// on both its channels.
func TestNPMPackage(t *testing.T) {
	node := need(t, "node")
	npm := need(t, "npm")
	bins := binaries(t)

	// The tarball, and what it holds.
	work := t.TempDir()
	packDir := filepath.Join(work, "pack")
	if err := os.Mkdir(packDir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := runCmd(t, "../web", npm, "pack", "--silent", "--pack-destination", packDir)
	tarball := filepath.Join(packDir, strings.TrimSpace(lastLine(out)))
	listing := runCmd(t, work, "tar", "-tzf", tarball)
	want := map[string]bool{"package/package.json": true, "package/herald.js": true, "package/herald.d.ts": true, "package/README.md": true}
	for _, name := range strings.Fields(listing) {
		if !want[name] {
			t.Errorf("tarball holds %s, which is not part of the package", name)
		}
		delete(want, name)
	}
	for name := range want {
		t.Errorf("tarball lacks %s", name)
	}

	// An empty project that installs the tarball and the tools.
	proj := filepath.Join(work, "app")
	copyDir(t, "testdata/npm", proj)
	runCmd(t, proj, npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
		tarball, typescriptPkg, esbuildPkg, nodeTypesPkg)

	packed, err := os.ReadFile(filepath.Join(proj, "node_modules/@heraldgw/client/herald.js"))
	if err != nil {
		t.Fatal(err)
	}
	source, err := os.ReadFile("../web/herald.js")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(packed, source) {
		t.Error("the installed herald.js differs from web/herald.js")
	}

	// Types: tsc checks example.ts (its @ts-expect-error lines prove the
	// types are applied) and emits out/example.js.
	runCmd(t, proj, filepath.Join(proj, "node_modules/.bin/tsc"), "-p", ".")
	// Bundlers: esbuild resolves the package for Node and for browsers.
	esbuild := filepath.Join(proj, "node_modules/.bin/esbuild")
	runCmd(t, proj, esbuild, "example.ts", "--bundle", "--platform=node", "--format=esm", "--outfile=bundle/example.mjs", "--log-level=warning")
	if err := os.WriteFile(filepath.Join(proj, "browser.js"), []byte("import { Herald } from '@heraldgw/client';\nexport const h = new Herald();\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runCmd(t, proj, esbuild, "browser.js", "--bundle", "--platform=browser", "--format=esm", "--outfile=bundle/browser.js", "--log-level=warning")
	if b, _ := os.ReadFile(filepath.Join(proj, "bundle/browser.js")); !bytes.Contains(b, []byte("Herald = class")) || bytes.Contains(b, []byte(`from "@heraldgw/client"`)) {
		t.Errorf("the browser bundle does not inline the client:\n%.400s", b)
	}

	// A gateway, single-node in memory: sessions through the API key.
	dir := t.TempDir()
	p, stdout := start(t, dir, "gateway", filepath.Join(bins, "gateway"), []string{
		"PATH=" + os.Getenv("PATH"),
		"HERALD_ADDR=127.0.0.1:0",
		"HERALD_NODE=solo",
		"HERALD_API_KEYS=" + apiKey,
	})
	addr, err := listeningAddr(stdout, 20*time.Second)
	if err != nil {
		t.Fatalf("gateway: %v\n%s", err, tail(p.log))
	}
	base := "http://" + addr
	user := "npm-" + uuid.NewString()[:8]
	sid := createSession(t, base, user)

	// The copy path: the gateway's /herald.js alone in a folder, next to the
	// emitted program with its import pointed at it.
	copied := filepath.Join(work, "copy")
	if err := os.Mkdir(copied, 0o755); err != nil {
		t.Fatal(err)
	}
	served := httpGet(t, base+"/herald.js")
	if !bytes.Equal(served, source) {
		t.Error("the gateway's /herald.js differs from web/herald.js")
	}
	writeFile(t, filepath.Join(copied, "herald.js"), served)
	emitted, err := os.ReadFile(filepath.Join(proj, "out/example.js"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(emitted, []byte(`from '@heraldgw/client'`)) {
		t.Fatalf("out/example.js does not import the package:\n%s", emitted)
	}
	writeFile(t, filepath.Join(copied, "package.json"), []byte(`{"type":"module"}`))
	writeFile(t, filepath.Join(copied, "example.js"), bytes.ReplaceAll(emitted, []byte(`'@heraldgw/client'`), []byte(`'./herald.js'`)))

	pub, err := herald.NewHTTPPublisher(base, apiKey, herald.HTTPConfig{})
	if err != nil {
		t.Fatal(err)
	}
	nodeArgs := nodeWebSocketFlags(t, node)
	for _, prog := range []struct{ name, path string }{
		{"installed", filepath.Join(proj, "out/example.js")},
		{"bundled", filepath.Join(proj, "bundle/example.mjs")},
		{"copied", filepath.Join(copied, "example.js")},
	} {
		t.Run(prog.name, func(t *testing.T) {
			effect := uuid.NewString()
			args := append(append([]string{}, nodeArgs...), prog.path, "ws://"+addr+"/ws", base, sid, effect)
			lines := runClient(t, node, args, func(line string) {
				if line != "subscribed effect:"+effect {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if _, err := herald.PublishEffectComplete(ctx, pub, herald.EffectComplete{
					UserID: user, UserEffectID: effect, ResultURL: "/dev/results/" + effect + ".svg",
				}); err != nil {
					t.Errorf("publish: %v", err)
				}
			})
			for _, want := range []string{
				"open solo",
				"subscribed effect:" + effect,
				"effect " + effect + " /dev/results/" + effect + ".svg 0",
				"user " + effect,
				"done",
			} {
				if !contains(lines, want) {
					t.Errorf("the client did not print %q; it printed:\n%s", want, strings.Join(lines, "\n"))
				}
			}
		})
	}
}

// runClient runs the Node client program, calling onLine for each line it
// prints, until it exits; it fails the test if it exits with an error or
// does not finish within a minute.
func runClient(t *testing.T, node string, args []string, onLine func(string)) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		onLine(sc.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("node %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, strings.Join(lines, "\n"), stderr.String())
	}
	return lines
}

// nodeWebSocketFlags returns the flag this Node needs for a global
// WebSocket: none from Node 22 on, --experimental-websocket on Node 20.
func nodeWebSocketFlags(t *testing.T, node string) []string {
	t.Helper()
	if strings.TrimSpace(runCmd(t, ".", node, "-p", "typeof WebSocket")) == "function" {
		return nil
	}
	if strings.TrimSpace(runCmd(t, ".", node, "--experimental-websocket", "-p", "typeof WebSocket")) == "function" {
		return []string{"--experimental-websocket"}
	}
	t.Fatalf("%s has no WebSocket, even with --experimental-websocket: Node 20.10 or later is needed", node)
	return nil
}

// createSession creates a session for user through the session API.
func createSession(t *testing.T, base, user string) string {
	t.Helper()
	req, err := http.NewRequest("POST", base+"/api/sessions", strings.NewReader(fmt.Sprintf(`{"userId":%q,"ttl":600}`, user)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out struct {
		SessionID string `json:"sessionId"`
	}
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &out) != nil || out.SessionID == "" {
		t.Fatalf("create session: %d %s", resp.StatusCode, body)
	}
	return out.SessionID
}

func httpGet(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return b
}

// runCmd runs a program in dir and returns its stdout; it fails the test,
// with what the program printed, when the program fails.
func runCmd(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s (in %s): %v\n%s%s", name, strings.Join(args, " "), dir, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// copyDir copies the regular files of src into dst, which it creates.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dst, e.Name()), b)
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func contains(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}
