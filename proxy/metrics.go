package proxy

import (
	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/tlsconf"
)

// observeSnapshot publishes the gauges that describe a snapshot.
func observeSnapshot(m *admin.Metrics, s *Snapshot) {
	m.Generation.Set(float64(s.Generation))
	m.Rules.Reset() // a removed route's gauge goes
	m.CertExpiry.Reset()
	m.CRLNextUpdate.Reset()
	for _, r := range s.Routes {
		m.Rules.WithLabelValues(r.Name).Set(float64(r.Matcher.Len()))
		// Touch the per-route series so dashboards show zeros, not gaps.
		m.Active.WithLabelValues(r.Name)
		m.Established.WithLabelValues(r.Name)
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
		for _, ic := range r.Material.CRLs {
			if crl := ic.CRL; !crl.NextUpdate.IsZero() {
				m.CRLNextUpdate.WithLabelValues(r.Name, crl.Issuer.String()).Set(float64(crl.NextUpdate.Unix()))
			}
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
