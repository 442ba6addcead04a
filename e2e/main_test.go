package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// Paths from this package's directory, where go test runs it.
const (
	moduleRoot    = ".."
	nginxTemplate = "../deploy/nginx/herald.conf.template" // the compose stack's nginx config
	composePath   = "../docker-compose.yml"
	dockerfile    = "../Dockerfile"
)

// binaryPackages are the programs the tests build, the same the Dockerfile
// builds into the image (the compose test checks).
var binaryPackages = []string{"./cmd/gateway", "./cmd/worker", "./deploy/probe"}

// binDir holds the binaries built for this test run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "herald-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildErr  error
)

// binaries builds binaryPackages once per test run, static as in the
// image, and returns the directory holding them.
func binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		args := append([]string{"build", "-o", binDir + string(filepath.Separator)}, binaryPackages...)
		cmd := exec.Command(goBin, args...)
		cmd.Dir = moduleRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// need returns the path of a program the test needs. A missing one fails
// the test under CI and skips it elsewhere; `make test` installs them all.
func need(t testing.TB, names ...string) string {
	t.Helper()
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		for _, dir := range []string{"/usr/sbin", "/usr/bin", "/usr/local/bin"} {
			p := filepath.Join(dir, name)
			if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				return p
			}
		}
	}
	msg := fmt.Sprintf("%s not installed: run `make test` (scripts/ensure-deps.sh installs it)", names[0])
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// artifactDir is where a failing test leaves screenshots and logs:
// $HERALD_ARTIFACTS or e2e/artifacts, one folder per test.
func artifactDir(t testing.TB) string {
	t.Helper()
	base := os.Getenv("HERALD_ARTIFACTS")
	if base == "" {
		base = "artifacts"
	}
	dir := filepath.Join(base, safeName(t.Name()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("artifacts: %v", err)
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return dir
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func safeName(s string) string { return strings.Trim(unsafeChars.ReplaceAllString(s, "_"), "_") }
