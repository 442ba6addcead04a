package herald_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestConsumerModule runs the tests of examples/consumer, a separate module
// that imports this package the way an app does (through a replace
// directive). "go test ./..." here does not descend into nested modules, so
// without this test nothing would notice when the public API stops being
// usable from outside, for instance by exposing an internal type.
func TestConsumerModule(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	dir, err := filepath.Abs(filepath.Join("examples", "consumer"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), goBin, "test", "-count=1", "./...")
	cmd.Dir = dir
	// GOWORK=off: a go.work of the developer's must not change what is built.
	// -mod=readonly: a stale go.mod or go.sum fails instead of being fixed.
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -mod=readonly"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go test in %s: %v\n%s", dir, err, out)
	}
	t.Logf("%s", out)
}
