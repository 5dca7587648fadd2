package proxy

import (
	"fmt"

	"go.uber.org/zap"
)

// Warnings returns what the snapshot allows but is probably a mistake, one
// sentence each naming the route and file: IP rules that admit a whole
// address family, and a CRL file that holds no CRL for a CA of the bundle.
// `spacegate check` prints them; Run and Reload log them. They never fail a
// load.
func (s *Snapshot) Warnings() []string {
	var out []string
	for _, r := range s.Routes {
		for _, w := range r.Rules.Warnings() {
			out = append(out, fmt.Sprintf("route %s: %s: %s", r.Name, r.IPRulesFile, w))
		}
	}
	seen := map[string]bool{} // CRL file and CA, each said once
	for _, r := range s.Routes {
		if r.Material == nil {
			continue
		}
		file := r.EffectiveTLS(s.Config.TLS).CRLFile
		for _, ca := range r.Material.CAsWithoutCRL() {
			w := fmt.Sprintf("CRL file %s holds no CRL of CA %s: certificates it issued are looked up in every CRL of the file by serial alone; "+
				"`spacegate certs rotate` writes one for every CA whose key pki.dir holds", file, ca.Subject)
			if !seen[w] {
				seen[w] = true
				out = append(out, w)
			}
		}
	}
	return out
}

// logWarnings logs each of snap's warnings.
func (s *Server) logWarnings(snap *Snapshot) {
	for _, w := range snap.Warnings() {
		s.log.Warn("configuration warning", zap.String("warning", w), zap.Uint64("generation", snap.Generation))
	}
}
