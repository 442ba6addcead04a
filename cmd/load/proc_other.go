//go:build !linux

package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent does nothing where there is no parent-death signal; the
// load tool still stops what it started when it ends normally.
func dieWithParent(cmd *exec.Cmd) {}

// bindNoPort does nothing beyond Linux.
func bindNoPort(network, address string, c syscall.RawConn) error { return nil }

// smallBuffers does nothing beyond Linux.
func smallBuffers(network, address string, c syscall.RawConn) error { return nil }
