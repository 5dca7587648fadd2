package proxy

import (
	"fmt"

	"go.uber.org/zap"
)

// Warnings returns what the snapshot allows but is probably a mistake, one
// sentence each naming the route and file: today, IP rules that admit a
// whole address family. `spacegate check` prints them; Run and Reload log
// them. They never fail a load.
func (s *Snapshot) Warnings() []string {
	var out []string
	for _, r := range s.Routes {
		for _, w := range r.Rules.Warnings() {
			out = append(out, fmt.Sprintf("route %s: %s: %s", r.Name, r.IPRulesFile, w))
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
