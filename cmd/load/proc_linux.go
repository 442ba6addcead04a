//go:build linux

package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill cmd's process when the load tool dies,
// however it dies, so no server or worker outlives an aborted run.
func dieWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}

// ipBindAddressNoPort is Linux's IP_BIND_ADDRESS_NO_PORT (linux/in.h).
const ipBindAddressNoPort = 24

// bindNoPort lets a socket bound to a source address pick its port at
// connect time, by the whole 4-tuple, instead of at bind time, where each
// bind searches for a port free for every destination: faster, and more
// than 28k sockets per source address.
func bindNoPort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// smallBuffers gives a stalled socket a 4 KiB receive buffer and a 536-byte
// MSS, set before connect. Over loopback (MSS 64 KiB) the server's send
// buffer otherwise grows to about 3–4 MB before a write to a peer that
// reads nothing blocks, which takes a minute and more at a few hundred
// frames a second; with these, about 90 KB, as over a real network.
func smallBuffers(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
		if serr == nil {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 536)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
