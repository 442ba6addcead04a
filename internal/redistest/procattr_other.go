//go:build !linux

package redistest

import "os/exec"

// dieWithTest does nothing where there is no parent-death signal: a server
// is still killed at cleanup, but outlives a test binary that is killed.
func dieWithTest(cmd *exec.Cmd) {}
