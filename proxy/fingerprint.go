package proxy

import (
	"cmp"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strings"

	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/allowlist"
	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/tlsconf"
)

// digestLen is how many hex digits of a SHA-256 the fingerprint and the
// rules digests keep: 64 bits tell a fleet's few versions of a file apart
// and still fit a dashboard's column and a metric label.
const digestLen = 16

// shortDigest returns the first digestLen hex digits of the SHA-256 of b.
func shortDigest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:digestLen]
}

// rulesDigest names the rules in force on a route by content: the ids and
// CIDRs, sorted by id, so that the order of the file and the descriptions
// and times do not count (they change nothing the gate enforces). A
// route without a rules file has the digest of no rules.
func rulesDigest(rules *allowlist.Rules) string {
	return shortDigest([]byte(strings.Join(ruleLines(rules), "\n")))
}

// ruleLines returns "id cidr" per rule, sorted (ids in lower case, as
// the Matcher has them).
func ruleLines(rules *allowlist.Rules) []string {
	var lines []string
	if rules != nil {
		for _, r := range rules.Rules {
			lines = append(lines, strings.ToLower(r.ID)+" "+r.CIDR.String())
		}
	}
	slices.Sort(lines)
	return lines
}

// fingerprint names everything s enforces by content: each route's
// settings, its rules (ids and CIDRs), the server certificate chain, the
// CA bundle and the CRLs, and the limits and PROXY protocol peers. File
// paths, the host of listen addresses, modification times, the
// generation, the admin and log sections and the replica's name are left
// out, so that replicas serving the same
// files under other paths agree, and a restart keeps the fingerprint.
//
// Settings are hashed as JSON with their zero values left out, so that a
// key a newer version adds, left unset, does not change the fingerprint
// of a fleet in the middle of a rolling upgrade.
func fingerprint(s *Snapshot) string {
	type routeContent struct {
		Settings   map[string]any `json:"settings"`
		Rules      []string       `json:"rules"`
		ServerCert []string       `json:"server_cert"`
		CAs        []string       `json:"cas"`
		CRLs       []string       `json:"crls"`
	}
	doc := struct {
		Limits        map[string]any `json:"limits"`
		ProxyProtocol map[string]any `json:"proxy_protocol"`
		Routes        []routeContent `json:"routes"`
	}{
		Limits:        nonZero(s.Config.Limits),
		ProxyProtocol: nonZero(s.Config.ProxyProtocol),
	}
	for _, r := range s.Routes {
		rc := routeContent{Settings: nonZero(routeSettings(s.Config, &r.Route)), Rules: ruleLines(r.Rules)}
		if m := r.Material; m != nil {
			for _, der := range m.Certificate.Certificate {
				rc.ServerCert = append(rc.ServerCert, shortDigest(der))
			}
			rc.CAs = caFingerprints(m)
			for _, crl := range crlsOf(m) {
				rc.CRLs = append(rc.CRLs, shortDigest(crl.Raw))
			}
		}
		doc.Routes = append(doc.Routes, rc)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		// Only plain values are marshalled; this cannot happen.
		panic(fmt.Sprintf("fingerprint: %v", err))
	}
	return shortDigest(b)
}

// routeSettings returns r with its file paths left out and its TLS keys
// resolved, for the fingerprint: what the files hold is hashed instead.
// The listen address counts by its port only: replicas on VMs bind each
// its own address, and that says nothing of what they enforce.
func routeSettings(c *config.Config, r *config.Route) config.Route {
	out := *r
	out.IPRulesFile, out.UpstreamCAFile, out.UpstreamCertFile, out.UpstreamKeyFile = "", "", "", ""
	if _, port, err := net.SplitHostPort(r.Listen); err == nil {
		out.Listen = ":" + port
	}
	out.TLS = &config.TLS{MinVersion: cmp.Or(r.EffectiveTLS(c.TLS).MinVersion, "1.2")}
	if out.MaxIPRules == 0 {
		out.MaxIPRules = config.DefaultMaxIPRules
	}
	return out
}

// nonZero returns v as a JSON object without its zero-valued fields.
func nonZero(v any) map[string]any {
	out := map[string]any{}
	rv := reflect.ValueOf(v)
	rt := rv.Type()
	for i := range rt.NumField() {
		f := rv.Field(i)
		if !rt.Field(i).IsExported() || f.IsZero() {
			continue
		}
		if f.Kind() == reflect.Pointer && f.Elem().Kind() == reflect.Struct {
			out[rt.Field(i).Name] = nonZero(f.Elem().Interface())
			continue
		}
		out[rt.Field(i).Name] = f.Interface()
	}
	return out
}

// caFingerprints returns the SHA-256 (hex) of each CA of m's bundle.
func caFingerprints(m *tlsconf.Material) []string {
	out := make([]string, 0, len(m.CAs))
	for _, ca := range m.CAs {
		sum := sha256.Sum256(ca.Raw)
		out = append(out, hex.EncodeToString(sum[:]))
	}
	return out
}

// crlsOf returns the CRLs m holds, one per issuer, in the file's order. It
// is the one place that reads them (for /v1/status, the metrics and the
// fingerprint).
func crlsOf(m *tlsconf.Material) []*x509.RevocationList {
	if m == nil {
		return nil
	}
	out := make([]*x509.RevocationList, 0, len(m.CRLs))
	for _, ic := range m.CRLs {
		out = append(out, ic.CRL)
	}
	return out
}

// crlFacts returns what /v1/status and the metrics say of the CRLs m
// holds: issuer, number and validity of each.
func crlFacts(m *tlsconf.Material) []admin.CRL {
	out := []admin.CRL{}
	for _, crl := range crlsOf(m) {
		number := ""
		if crl.Number != nil {
			number = crl.Number.String()
		}
		out = append(out, admin.CRL{
			Issuer: crl.Issuer.String(), Number: number,
			ThisUpdate: crl.ThisUpdate, NextUpdate: crl.NextUpdate,
			Revoked: len(crl.RevokedCertificateEntries),
		})
	}
	return out
}
