package main

import (
	"context"
	"io"
	"strings"
	"testing"
)

// gateway -h shows the flags with their defaults and exits 0.
func TestHelpExitsZero(t *testing.T) {
	var stderr strings.Builder
	if err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, io.Discard, &stderr); err != nil {
		t.Errorf("run -h: got %v, want nil (exit 0)", err)
	}
	if !strings.Contains(stderr.String(), "-herald-addr value, HERALD_ADDR (default :8080)") {
		t.Errorf("run -h printed:\n%s", stderr.String())
	}
}
