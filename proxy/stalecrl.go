package proxy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// A StaleCRL is a CRL in force that is past its nextUpdate. It still
// revokes what it lists, but a certificate revoked since it was signed is
// not in it: the gate loads it with a warning rather than refusing it,
// since refusing would turn a late CRL into an outage. A CRL file holds one
// CRL per CA, and each is judged on its own.
type StaleCRL struct {
	File       string
	Issuer     string
	NextUpdate time.Time
	Routes     []string // the routes that use it
}

// String says what is wrong and what to do, for `spacegate check`.
func (c StaleCRL) String() string {
	return fmt.Sprintf("CRL file %s: the CRL of %s (routes %s) is past its nextUpdate of %s: certificates of that CA revoked since it was signed are still admitted; sign a fresh CRL",
		c.File, c.Issuer, strings.Join(c.Routes, ", "), c.NextUpdate.UTC().Format(time.RFC3339))
}

// StaleCRLs returns every CRL of s whose nextUpdate is at or before now,
// each CRL of each file once, in route order.
func (s *Snapshot) StaleCRLs(now time.Time) []StaleCRL {
	var out []StaleCRL
	for _, r := range s.Routes {
		if r.Material == nil {
			continue
		}
		file := r.EffectiveTLS(s.Config.TLS).CRLFile
		for _, ic := range r.Material.CRLs {
			crl := ic.CRL
			if crl.NextUpdate.IsZero() || now.Before(crl.NextUpdate) {
				continue
			}
			issuer := crl.Issuer.String()
			if i := slices.IndexFunc(out, func(c StaleCRL) bool { return c.File == file && c.Issuer == issuer }); i >= 0 {
				out[i].Routes = append(out[i].Routes, r.Name)
				continue
			}
			out = append(out, StaleCRL{File: file, Issuer: issuer, NextUpdate: crl.NextUpdate, Routes: []string{r.Name}})
		}
	}
	return out
}

// warnStaleCRLs logs each stale CRL of snap; the server calls it for every
// snapshot it puts in force.
func (s *Server) warnStaleCRLs(snap *Snapshot) {
	for _, c := range snap.StaleCRLs(s.now()) {
		s.log.Warn("CRL is past its nextUpdate: certificates revoked since it was signed are still admitted; sign a fresh CRL",
			zap.String("file", c.File), zap.String("issuer", c.Issuer), zap.Time("next_update", c.NextUpdate),
			zap.Strings("routes", c.Routes), zap.Uint64("generation", snap.Generation))
	}
}
