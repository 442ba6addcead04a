//go:build linux

package redistest

import (
	"os/exec"
	"syscall"
)

// dieWithTest makes the kernel kill the redis-server when the test binary
// dies, however it dies (a panic, a timeout, SIGKILL), so no server outlives
// an aborted test.
func dieWithTest(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
