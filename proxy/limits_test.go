package proxy

import (
	"net/netip"
	"strings"
	"testing"
)

// TestLimitDefaults: by default no source, certificate or route can take
// every slot of the gate, and a negative bound is a config error.
func TestLimitDefaults(t *testing.T) {
	twoRoutes := minimalConfig + `  - name: cache
    protocol: redis
    listen: 127.0.0.1:6380
    upstream: 127.0.0.1:6379
    ip_rules_file: rules/db.yaml
`
	for _, tc := range []struct {
		name                      string
		yaml                      string
		perSource, perCert, route int
		pending, pendingPerSource int
	}{
		{"defaults", minimalConfig, 2500, 2500, 0, 1000, 100},
		{"several routes share", twoRoutes, 2500, 2500, 7500, 1000, 100},
		{"a small gate", "limits:\n  max_connections: 100\n" + twoRoutes, 64, 64, 75, 1000, 100},
		{"a tiny gate", "limits:\n  max_connections: 10\n" + minimalConfig, 10, 10, 0, 1000, 100},
		{"set", "limits:\n  max_connections_per_source: 7\n  max_connections_per_certificate: 3\n  max_pending: 20\n  max_pending_per_source: 5\n" + minimalConfig, 7, 3, 0, 20, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tc.yaml), "/etc/spacegate/spacegate.yaml")
			if err != nil {
				t.Fatal(err)
			}
			l := cfg.Limits
			if l.MaxConnectionsPerSource != tc.perSource || l.MaxConnectionsPerCertificate != tc.perCert ||
				l.MaxPending != tc.pending || l.MaxPendingPerSource != tc.pendingPerSource {
				t.Errorf("limits = %+v", l)
			}
			for _, r := range cfg.Routes {
				if r.MaxConnections != tc.route {
					t.Errorf("route %s: max_connections %d, want %d", r.Name, r.MaxConnections, tc.route)
				}
			}
		})
	}
	for _, key := range []string{"max_connections_per_source", "max_connections_per_certificate", "max_pending", "max_pending_per_source"} {
		_, err := ParseConfig([]byte("limits:\n  "+key+": -1\n"+minimalConfig), "/etc/spacegate/c.yaml")
		if err == nil || !strings.Contains(err.Error(), "limits."+key+" must not be negative") {
			t.Errorf("%s: -1: %v", key, err)
		}
	}
	if _, err := ParseConfig([]byte(minimalConfig+"    max_connections: -1\n"), "/etc/spacegate/c.yaml"); err == nil ||
		!strings.Contains(err.Error(), `route "db": max_connections must not be negative`) {
		t.Errorf("route max_connections -1: %v", err)
	}
}

// TestLimiterNamesEachCap: each cap refuses with its own reason and a
// message naming it and its value, and release frees every count.
func TestLimiterNamesEachCap(t *testing.T) {
	lim := LimitsConfig{MaxConnections: 10, MaxConnectionsPerSource: 3, MaxConnectionsPerCertificate: 2}
	db := &Route{RouteConfig: RouteConfig{Name: "db", MaxConnections: 4}}
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
