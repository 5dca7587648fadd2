package admin

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestClientExpiryCollectorForgetsOldIdentities(t *testing.T) {
	now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	c := &clientExpiryCollector{desc: prometheus.NewDesc("x", "x", []string{"route", "identity"}, nil),
		seen: map[[2]string]clientSeen{}, ttl: time.Hour, now: func() time.Time { return now }}
	c.observe("db", "old", now.Add(48*time.Hour))
	c.observe("db", "old", now.Add(72*time.Hour)) // the nearest expiry is kept
	now = now.Add(30 * time.Minute)
	c.observe("db", "new", now.Add(400*24*time.Hour))
	collect := func() map[string]float64 {
		ch := make(chan prometheus.Metric, 10)
		c.Collect(ch)
		close(ch)
		out := map[string]float64{}
		for m := range ch {
			var pb dto.Metric
			m.Write(&pb)
			// Labels sort by name: identity, then route.
			out[pb.GetLabel()[0].GetValue()] = pb.GetGauge().GetValue()
		}
		return out
	}
	if got := collect(); len(got) != 2 || got["old"] != float64(now.Add(-30*time.Minute).Add(48*time.Hour).Unix()) {
		t.Fatalf("collected %v", got)
	}
	now = now.Add(45 * time.Minute) // "old" last seen 75 min ago, beyond the TTL
	if got := collect(); len(got) != 1 || got["new"] == 0 {
		t.Fatalf("after the TTL: %v", got)
	}
}

// TestMetricsNames: the names dashboards and alerts use do not change.
func TestMetricsNames(t *testing.T) {
	want := []string{
		"spacegate_bytes_total",
		"spacegate_cancel_requests_total",
		"spacegate_cert_expiry_timestamp_seconds",
		"spacegate_client_cert_expiry_timestamp_seconds",
		"spacegate_config_generation",
		"spacegate_config_info",
		"spacegate_config_last_reload_successful",
		"spacegate_connection_duration_seconds",
		"spacegate_connections_accepted_total",
		"spacegate_connections_active",
		"spacegate_connections_closed_total",
		"spacegate_connections_cut_total",
		"spacegate_connections_established_total",
		"spacegate_connections_refused_total",
		"spacegate_connections_upstream_lost_total",
		"spacegate_crl_next_update_timestamp_seconds",
		"spacegate_handshake_seconds",
		"spacegate_ip_rules",
		"spacegate_last_reload_success_timestamp_seconds",
		"spacegate_panics_total",
		"spacegate_reloads_total",
		"spacegate_route_rules_info",
		"spacegate_upstream_connect_seconds",
		"spacegate_upstream_up",
	}
	got := NewMetrics().Names()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Names() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestRefusedByRoute: the count is connections_refused_total of one
// reason, summed per route, and asking creates no series.
func TestRefusedByRoute(t *testing.T) {
	m := NewMetrics()
	if got := m.RefusedByRoute("upstream_unavailable"); len(got) != 0 {
		t.Errorf("before any refusal: %v", got)
	}
	m.Refused.WithLabelValues("db", "upstream_unavailable").Add(3)
	m.Refused.WithLabelValues("db", "ip_not_allowed").Inc()
	m.Refused.WithLabelValues("cache", "upstream_unavailable").Inc()
	got := m.RefusedByRoute("upstream_unavailable")
	if len(got) != 2 || got["db"] != 3 || got["cache"] != 1 {
		t.Errorf("RefusedByRoute = %v, want db 3, cache 1", got)
	}
	if got := m.RefusedByRoute("no_such_reason"); len(got) != 0 {
		t.Errorf("RefusedByRoute(no_such_reason) = %v", got)
	}
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "spacegate_connections_refused_total" && len(mf.GetMetric()) != 3 {
			t.Errorf("%d series of connections_refused_total, want the 3 counted", len(mf.GetMetric()))
		}
	}
}

// TestClientExpiries: what the status lists is what the metric exports.
func TestClientExpiries(t *testing.T) {
	m := NewMetrics()
	at := time.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)
	m.ObserveClientCert("db", "spiffe://spacegate/route/db/client/a", at.Add(time.Hour))
	m.ObserveClientCert("db", "spiffe://spacegate/route/db/client/a", at)
	m.ObserveClientCert("db", "", at)                 // no identity: not kept
	m.ObserveClientCert("db", "cn-only", time.Time{}) // no expiry: not kept
	got := m.ClientExpiries()
	want := CertExpiry{Kind: CertClient, Route: "db", Subject: "spiffe://spacegate/route/db/client/a", NotAfter: at}
	if len(got) != 1 || got[0] != want {
		t.Errorf("ClientExpiries = %+v, want [%+v]", got, want)
	}
}
