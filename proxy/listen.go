package proxy

import (
	"context"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// listen opens a TCP listener with SO_REUSEPORT, so that a new gate process
// can bind the same addresses beside the old one during an upgrade; the old
// one then stops accepting and drains, and the kernel hands every new
// connection to a process that accepts. Both processes must set it, so a
// port held by anything else still fails to bind.
//
// 0.0.0.0 and every IPv4 address listen on IPv4 only, so that 0.0.0.0
// never also opens the port to IPv6 peers a firewall may not cover. [::]
// is how to ask for IPv6: it listens on both families (IPV6_V6ONLY off,
// IPv4 peers seen as mapped addresses, which the rules match as IPv4), as
// a route has one listen address; any other IPv6 address on that address.
func listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(context.Background(), listenNetwork(addr), addr)
}

// listenNetwork is the network of a listen address: "tcp4" for an IPv4
// host (IPv4-mapped IPv6 included), "tcp6" for an IPv6 host but [::], and
// "tcp" for [::] (Go turns IPV6_V6ONLY off there) and for a host name,
// which the resolver turns into one address.
func listenNetwork(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "tcp"
	}
	a, err := netip.ParseAddr(host)
	switch {
	case err != nil:
		return "tcp"
	case a.Unmap().Is4():
		return "tcp4"
	case a.IsUnspecified():
		return "tcp"
	default:
		return "tcp6"
	}
}
