package proxy

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// The socket options of the pending pool that only Linux has. Elsewhere
// sockopt_other.go does without them.

// unreadBytes returns how many bytes from the peer wait unread on nc. It
// neither reads nor waits, nor contends with a Read blocked on nc.
func unreadBytes(nc net.Conn) int {
	rc, err := rawConn(nc)
	if rc == nil || err != nil {
		return 0
	}
	n := 0
	_ = rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
			n = v
		}
	})
	return n
}

// deferAccept asks the kernel not to hand the gate a connection before its
// client has sent something, for up to d: PostgreSQL and Redis clients
// speak first, so a real client is accepted as soon as its first packet
// arrives, while a socket that sends nothing costs a request socket in the
// kernel rather than a slot of the pending pool. Past d the kernel hands
// it over at the client's next ACK, and the handshake timeout applies.
func deferAccept(ln net.Listener, d time.Duration) error {
	rc, err := rawConn(ln)
	if rc == nil || err != nil {
		return err
	}
	secs := max(1, int((d+time.Second-1)/time.Second))
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, secs)
	}); err != nil {
		return err
	}
	return serr
}
