package testenv

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before the caller binds it, so servers
// started on it should retry with a new port on "address in use".
// FreePort fails t if no port can be had.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := freeLoopbackPort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// FreeAddr returns "127.0.0.1:PORT" for a port chosen as FreePort does.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return loopbackAddr(FreePort(t))
}

// freeLoopbackPort asks the kernel for an ephemeral port on 127.0.0.1 by
// listening on port 0, then closes the listener to hand the port on.
func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port on 127.0.0.1: %w", err)
	}
	addr, err := netip.ParseAddrPort(ln.Addr().String())
	if cerr := ln.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("finding a free port on 127.0.0.1: %w", err)
	}
	return int(addr.Port()), nil
}

// FreeAddrs returns n distinct "127.0.0.1:PORT" addresses that were free a
// moment ago, for programs that start servers outside a test (bench/).
func FreeAddrs(n int) ([]string, error) {
	// Holding every listener until all are chosen keeps the ports distinct.
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port on 127.0.0.1: %w", err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

func loopbackAddr(port int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}
