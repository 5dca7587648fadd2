package tlsconf

import (
	"fmt"
	"strings"
)

// A client pattern names the client identities a route accepts:
//
//	"*"          any certificate that chains to the space CA
//	cn:GLOB      the subject common name
//	dns:GLOB     a DNS SAN (case-insensitive)
//	uri:GLOB     a URI SAN, e.g. uri:spiffe://space.example/route/db/*
//
// In a cn: or dns: GLOB, * matches any run of characters, '.' included.
// In a uri: GLOB, * matches within one path segment (no '/'), ** matches
// across segments, and a * that ends the pattern matches the rest of the
// URI, so that spiffe://*/route/db/* takes every client issued for route
// db (spiffe://TRUST_DOMAIN/route/db/client/ID) but no URI whose trust
// domain or route merely contains "/route/db/". Everything else is literal.
const (
	patternAny = "*"
	prefixCN   = "cn:"
	prefixDNS  = "dns:"
	prefixURI  = "uri:"
)

// CheckClientPattern reports whether p is a valid client pattern.
func CheckClientPattern(p string) error {
	if p == patternAny {
		return nil
	}
	for _, prefix := range []string{prefixCN, prefixDNS, prefixURI} {
		if rest, ok := strings.CutPrefix(p, prefix); ok {
			if rest == "" {
				return fmt.Errorf("pattern %q has nothing after %q", p, prefix)
			}
			return nil
		}
	}
	return fmt.Errorf("pattern %q: want \"*\", or cn:, dns: or uri: followed by a glob", p)
}

// RouteURIPattern is the URI SAN pattern of the certificates issued for a
// route, which a route accepts when its config lists no allowed clients.
func RouteURIPattern(route string) string {
	return prefixURI + "spiffe://*/route/" + route + "/*"
}

// RouteURI is the URI SAN of a client certificate issued for a route.
func RouteURI(trustDomain, route, id string) string {
	return "spiffe://" + trustDomain + "/route/" + route + "/client/" + id
}

// ClientPatterns is the set of identities one route accepts. The zero value
// accepts nobody. It is immutable and safe for concurrent use.
type ClientPatterns struct {
	route    string
	patterns []string
}

// NewClientPatterns returns the patterns of route. Nil patterns mean the
// default: the certificates issued for route (RouteURIPattern). Patterns
// must have passed CheckClientPattern.
func NewClientPatterns(route string, patterns []string) ClientPatterns {
	if patterns == nil {
		patterns = []string{RouteURIPattern(route)}
	}
	return ClientPatterns{route: route, patterns: patterns}
}

// Allows reports whether id matches any of the patterns.
func (cp ClientPatterns) Allows(id Identity) bool {
	for _, p := range cp.patterns {
		switch {
		case p == patternAny:
			return true
		case strings.HasPrefix(p, prefixCN):
			if glob(p[len(prefixCN):], id.CommonName) {
				return true
			}
		case strings.HasPrefix(p, prefixDNS):
			for _, n := range id.DNSNames {
				if glob(strings.ToLower(p[len(prefixDNS):]), strings.ToLower(n)) {
					return true
				}
			}
		case strings.HasPrefix(p, prefixURI):
			for _, u := range id.URIs {
				if globPath(p[len(prefixURI):], u) {
					return true
				}
			}
		}
	}
	return false
}

// Refusal returns the sentence a refused client reads: which certificate,
// which route, and, when the certificate was issued for other routes, which.
func (cp ClientPatterns) Refusal(id Identity) string {
	who := fmt.Sprintf("client certificate (serial %s, %s)", id.Serial, orNone(id.Subject))
	if others := issuedRoutes(id); len(others) > 0 {
		return fmt.Sprintf("%s is issued for route %s, not for route %s; use a certificate issued for %s",
			who, strings.Join(others, ", "), cp.route, cp.route)
	}
	return fmt.Sprintf("%s is not allowed on route %s (allowed: %s)", who, cp.route, strings.Join(cp.patterns, ", "))
}

// issuedRoutes returns the routes named by id's spiffe://*/route/NAME/ URIs.
func issuedRoutes(id Identity) []string {
	var out []string
	for _, u := range id.URIs {
		rest, ok := strings.CutPrefix(u, "spiffe://")
		if !ok {
			continue
		}
		_, rest, ok = strings.Cut(rest, "/route/")
		if !ok {
			continue
		}
		if name, _, ok := strings.Cut(rest, "/"); ok && name != "" {
			out = append(out, name)
		}
	}
	return out
}

// glob matches s against pattern, where * matches any run of characters.
func glob(pattern, s string) bool {
	// Iterative wildcard match with one backtrack point: linear in
	// practice, never exponential, whatever the client sends.
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// globPath matches s against a uri: pattern: * within one '/'-separated
// segment, ** across segments, and a * at the end of the pattern across
// them too. It runs over every pair of pattern and URI positions, which is
// bounded: patterns come from the config and URIs from certificates the
// space CA signed, checked only after their chain.
func globPath(pattern, s string) bool {
	// m[j] reports whether the pattern read so far matches s[:j].
	m := make([]bool, len(s)+1)
	next := make([]bool, len(s)+1)
	m[0] = true
	for i := 0; i < len(pattern); i++ {
		switch {
		case pattern[i] == '*' && (i+1 == len(pattern) || pattern[i+1] == '*'):
			if i+1 < len(pattern) {
				i++ // "**"
			}
			seen := false
			for j := range m {
				seen = seen || m[j]
				next[j] = seen
			}
		case pattern[i] == '*':
			next[0] = m[0]
			for j := 1; j <= len(s); j++ {
				next[j] = m[j] || next[j-1] && s[j-1] != '/'
			}
		default:
			next[0] = false
			for j := 1; j <= len(s); j++ {
				next[j] = m[j-1] && pattern[i] == s[j-1]
			}
		}
		m, next = next, m
	}
	return m[len(s)]
}
