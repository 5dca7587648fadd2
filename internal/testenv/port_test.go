package testenv

import (
	"net"
	"net/netip"
	"testing"
)

func TestFreeAddr(t *testing.T) {
	addr := FreeAddr(t)
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatalf("FreeAddr() = %q: %v", addr, err)
	}
	if ap.Addr() != netip.MustParseAddr("127.0.0.1") || ap.Port() == 0 {
		t.Fatalf("FreeAddr() = %q, want 127.0.0.1 and a nonzero port", addr)
	}
	// The port must really be free to bind.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on FreeAddr() %s: %v", addr, err)
	}
	ln.Close()
}
