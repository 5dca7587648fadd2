package proxy

import (
	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/tlsconf"
)

// observeSnapshot publishes the gauges that describe a snapshot.
func observeSnapshot(m *admin.Metrics, s *Snapshot) {
	m.Generation.Set(float64(s.Generation))
	m.ReloadOK.Set(1)
	m.ConfigInfo.Reset() // the previous fingerprint's series goes
	m.ConfigInfo.WithLabelValues(s.Fingerprint).Set(1)
	m.RouteRulesInfo.Reset()
	m.Rules.Reset() // a removed route's gauge goes
	m.CertExpiry.Reset()
	m.CRLNextUpdate.Reset()
	for _, l := range s.Listeners {
		if l.Shared() {
			touchRefused(m, "unrouted")
		}
	}
	for _, r := range s.Routes {
		m.Rules.WithLabelValues(r.Name).Set(float64(r.Matcher.Len()))
		m.RouteRulesInfo.WithLabelValues(r.Name, r.RulesDigest).Set(1)
		// Touch the per-route series so dashboards show zeros, not gaps,
		// and increase() sees the first event.
		m.Active.WithLabelValues(r.Name)
		m.Established.WithLabelValues(r.Name)
		m.Closed.WithLabelValues(r.Name)
		touchRefused(m, r.Name)
		for _, why := range cutReasons() {
			m.Cut.WithLabelValues(r.Name, why.String())
		}
		if r.Protocol == config.ProtocolPostgres {
			m.UpstreamLost.WithLabelValues(r.Name)
			for _, res := range cancelResults() {
				m.Cancels.WithLabelValues(r.Name, res)
			}
		}
		if r.Material == nil {
			continue
		}
		leaf := r.Material.Certificate.Leaf
		if leaf != nil {
			m.CertExpiry.WithLabelValues(r.Name, admin.CertServer, leaf.Subject.String()).Set(float64(leaf.NotAfter.Unix()))
		}
		for _, ca := range r.Material.CAs {
			m.CertExpiry.WithLabelValues(r.Name, admin.CertCA, ca.Subject.String()).Set(float64(ca.NotAfter.Unix()))
		}
		for _, crl := range crlFacts(r.Material) {
			if !crl.NextUpdate.IsZero() {
				m.CRLNextUpdate.WithLabelValues(r.Name, crl.Issuer).Set(float64(crl.NextUpdate.Unix()))
			}
		}
	}
}

// cutReasons are the reasons a live connection can be cut for: what a
// reload's recheck can find (see conn.recheck), expiry, and shutdown.
func cutReasons() []Reason {
	return []Reason{
		ReasonIPNotAllowed, ReasonCertUntrusted, ReasonCertUsage, ReasonCertExpired, ReasonCertNotYetValid,
		ReasonCertRevoked, ReasonCertWeakKey, ReasonIdentityNotAllowed, ReasonUserMismatch, ReasonRouteDisabled,
		ReasonShutdown,
	}
}

// cancelResults are the results of cancel_requests_total (see forwardCancel).
func cancelResults() []string { return []string{"forwarded", "refused", "failed"} }

// touchRefused creates connections_refused_total{route,reason} at 0 for
// every reason a connection can be refused for.
func touchRefused(m *admin.Metrics, route string) {
	for r := ReasonNone + 1; int(r) < len(reasonNames); r++ {
		if r != ReasonShutdown {
			m.Refused.WithLabelValues(route, r.String())
		}
	}
}

// observeClientCert records the expiry of an admitted client certificate
// under its identity: its first URI SAN, else its CN.
func observeClientCert(m *admin.Metrics, route string, id tlsconf.Identity) {
	name := id.CommonName
	if len(id.URIs) > 0 {
		name = id.URIs[0]
	}
	m.ObserveClientCert(route, name, id.NotAfter)
}
