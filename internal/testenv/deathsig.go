//go:build linux || freebsd

package testenv

import "syscall"

// KillWithParent has the process started with attr killed when the process
// that started it dies. A test binary killed by -timeout runs no cleanup;
// without this its servers would outlive it. The signal follows the thread
// that forked, which the Go runtime keeps alive unless a goroutine locked
// to it exits.
func KillWithParent(attr *syscall.SysProcAttr) {
	attr.Pdeathsig = syscall.SIGKILL
}
