//go:build !linux

package proxy

import (
	"net"
	"syscall"
	"time"
)

// The portable stand-ins for the Linux socket options of the pending pool
// (sockopt_linux.go).

// unreadPeek bounds what unreadBytes can report here: the pool only asks
// whether a first byte, and a whole 8-byte SSLRequest, have arrived.
const unreadPeek = 64

// unreadBytes returns how many bytes from the peer wait unread on nc, at
// most unreadPeek: there is no portable SIOCINQ, so it peeks (MSG_PEEK)
// into a small buffer instead. It neither consumes nor waits, nor contends
// with a Read blocked on nc.
func unreadBytes(nc net.Conn) int {
	rc, err := rawConn(nc)
	if rc == nil || err != nil {
		return 0
	}
	n := 0
	var buf [unreadPeek]byte
	_ = rc.Control(func(fd uintptr) {
		if v, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT); err == nil {
			n = v
		}
	})
	return n
}

// deferAccept does nothing here: TCP_DEFER_ACCEPT is Linux-only (macOS has
// no equivalent; FreeBSD's accept filters are not used). Every socket is
// accepted at once, a silent one included, and waits in the pending pool,
// whose bounds and eviction and the handshake timeout are then the only
// defence against idle sockets.
func deferAccept(net.Listener, time.Duration) error { return nil }
