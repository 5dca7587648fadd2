package proxy

import (
	"net/netip"
	"testing"

	"github.com/spacegate/spacegate/config"
)

// TestLimiterNamesEachCap: each cap refuses with its own reason and a
// message naming it and its value, and release frees every count.
func TestLimiterNamesEachCap(t *testing.T) {
	lim := config.Limits{MaxConnections: 10, MaxConnectionsPerSource: 3, MaxConnectionsPerCertificate: 2}
	db := &Route{Route: config.Route{Name: "db", MaxConnections: 4}}
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	var l limiter
	take := func(src netip.Addr, cert string) *Refusal { return l.acquire(lim, db, src, cert) }
	for _, tc := range []struct {
		src    netip.Addr
		cert   string
		reason Reason
		msg    string
	}{
		{a, "01", ReasonNone, ""},
		{a, "01", ReasonNone, ""},
		{a, "01", ReasonCertConnectionLimit, "too many connections with client certificate 01 (limit 2 per certificate)"},
		{a, "02", ReasonNone, ""},
		{a, "03", ReasonSourceConnectionLimit, "too many connections from 192.0.2.1 (limit 3 per source address)"},
		{b, "03", ReasonNone, ""},
		{c, "04", ReasonRouteConnectionLimit, "too many connections for route db (limit 4)"},
	} {
		ref := take(tc.src, tc.cert)
		switch {
		case tc.reason == ReasonNone && ref != nil:
			t.Fatalf("%s %s: refused %v", tc.src, tc.cert, ref)
		case tc.reason != ReasonNone && (ref == nil || ref.Reason != tc.reason || ref.Msg != tc.msg || ref.Reason.sqlstate() != "53300"):
			t.Fatalf("%s %s: %+v, want %s %q 53300", tc.src, tc.cert, ref, tc.reason, tc.msg)
		}
	}
	for _, h := range []struct {
		src  netip.Addr
		cert string
	}{{a, "01"}, {a, "01"}, {a, "02"}, {b, "03"}} {
		l.release("db", h.src, h.cert)
	}
	if l.total != 0 || len(l.perRoute)+len(l.perSrc)+len(l.perCert) != 0 {
		t.Errorf("after release: total %d, maps %v %v %v", l.total, l.perRoute, l.perSrc, l.perCert)
	}
}
