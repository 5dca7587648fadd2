//go:build !(linux || freebsd)

package testenv

import "syscall"

// KillWithParent does nothing here: this system has no parent-death signal
// (Linux and FreeBSD do; macOS does not). A test binary killed by -timeout
// runs no cleanup, so here the servers it started outlive it and must be
// killed by hand; a test run that ends normally still stops them.
func KillWithParent(*syscall.SysProcAttr) {}
