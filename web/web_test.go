package web

import (
	"io/fs"
	"os"
	"os/exec"
	"regexp"
	"testing"
)

// TestNodeUnit runs the client's unit tests (web/test/*.test.mjs) with
// Node's built-in runner: no npm packages. Without node the test is
// skipped, except under CI; `make test` installs it.
func TestNodeUnit(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		msg := "node not installed: run `make test` (scripts/ensure-deps.sh installs nodejs)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// TAP, whatever the default reporter of this Node version.
	cmd := exec.Command(node, "--test", "--test-reporter=tap", "test/")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test web/test/: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`(?m)^# pass [1-9]`).Match(out) || !regexp.MustCompile(`(?m)^# fail 0$`).Match(out) {
		t.Fatalf("node --test web/test/ ran no passing test:\n%s", out)
	}
}

// TestEmbedded: every file the page and the client import is embedded, and
// herald.d.ts declares every export of herald.js.
func TestEmbedded(t *testing.T) {
	imports := regexp.MustCompile(`(?m)^\s*(?:import|export)\b[^'"]*?from\s+'\./([^']+)'|(?:src|href)="([^":]+)"`)
	for _, page := range []string{"index.html", "app.js", "herald.js"} {
		b, err := fs.ReadFile(FS(), page)
		if err != nil {
			t.Fatalf("%s not embedded: %v", page, err)
		}
		for _, m := range imports.FindAllStringSubmatch(string(b), -1) {
			name := m[1] + m[2]
			if _, err := fs.Stat(FS(), name); err != nil {
				t.Errorf("%s refers to %s, which is not embedded (web.go's go:embed list)", page, name)
			}
		}
	}

	js, _ := fs.ReadFile(FS(), "herald.js")
	dts, err := fs.ReadFile(FS(), "herald.d.ts")
	if err != nil {
		t.Fatal(err)
	}
	// herald.js is one file: copied alone, it must not need another.
	if m := regexp.MustCompile(`(?m)^\s*import\b.*|^\s*export\b[^;]*\bfrom\s*['"].*`).Find(js); m != nil {
		t.Errorf("herald.js imports another file (%s): it must work when copied alone", m)
	}
	var exported []string
	for _, m := range regexp.MustCompile(`(?m)^export (?:class|function|const) (\w+)`).FindAllStringSubmatch(string(js), -1) {
		exported = append(exported, m[1])
	}
	for _, name := range exported {
		if !regexp.MustCompile(`(?m)^export (?:class|function|const|type|interface) ` + name + `\b`).Match(dts) {
			t.Errorf("herald.d.ts does not declare %s", name)
		}
	}
}
