package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/spacegate/spacegate/internal/safefile"
	"github.com/spacegate/spacegate/tlsconf"
)

// validator collects problems with the line of the key they concern.
type validator struct {
	file string
	root *yaml.Node
	errs []error
}

// addf records a problem at the key named by path ("routes", 0, "listen").
func (v *validator) addf(path []any, format string, args ...any) {
	v.errs = append(v.errs, &Error{File: v.file, Line: lineOf(v.root, path...), Msg: fmt.Sprintf(format, args...)})
}

var routeName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

func (c *Config) validate(v *validator) {
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		v.addf([]any{"log", "level"}, "log.level %q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "json", "console":
	default:
		v.addf([]any{"log", "format"}, "log.format %q is not one of json, console", c.Log.Format)
	}
	c.Admin.validate(v)
	for i, s := range c.ProxyProtocol.TrustedCIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			v.addf([]any{"proxy_protocol", "trusted_cidrs", i}, "proxy_protocol.trusted_cidrs: %q is not a CIDR block such as 10.0.0.0/8", s)
		}
	}
	l := &c.Limits
	if l.MaxConnections < 0 {
		v.addf([]any{"limits", "max_connections"}, "limits.max_connections must not be negative, got %d", l.MaxConnections)
	}
	for _, d := range []struct {
		key string
		val *time.Duration
		def time.Duration
	}{
		{"handshake_timeout", &l.HandshakeTimeout, DefaultHandshakeTimeout},
		{"upstream_connect_timeout", &l.UpstreamConnectTimeout, DefaultUpstreamConnectTimeout},
		{"drain_timeout", &l.DrainTimeout, DefaultDrainTimeout},
		{"shutdown_delay", &l.ShutdownDelay, 0},
	} {
		if *d.val < 0 {
			v.addf([]any{"limits", d.key}, "limits.%s must be positive, got %s", d.key, *d.val)
		}
		if *d.val == 0 {
			*d.val = d.def
		}
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	for _, n := range []struct {
		key string
		val *int
		def int
	}{
		{"max_pending", &l.MaxPending, DefaultMaxPending},
		{"max_pending_per_source", &l.MaxPendingPerSource, DefaultMaxPendingPerSource},
		{"max_connections_per_source", &l.MaxConnectionsPerSource, defaultShareOf(l.MaxConnections)},
		{"max_connections_per_certificate", &l.MaxConnectionsPerCertificate, defaultShareOf(l.MaxConnections)},
	} {
		if *n.val < 0 {
			v.addf([]any{"limits", n.key}, "limits.%s must not be negative, got %d", n.key, *n.val)
		}
		if *n.val == 0 {
			*n.val = n.def
		}
	}
	if len(c.Routes) > 1 {
		// So that one route cannot starve the others: each keeps a quarter.
		for i := range c.Routes {
			if c.Routes[i].MaxConnections == 0 {
				c.Routes[i].MaxConnections = max(1, l.MaxConnections*3/4)
			}
		}
	}
	c.TLS.validate(v, []any{"tls"}, "tls")
	if c.PKI.TrustDomain == "" {
		c.PKI.TrustDomain = DefaultTrustDomain
	} else if !validServerName(c.PKI.TrustDomain) || strings.Contains(c.PKI.TrustDomain, "*") {
		v.addf([]any{"pki", "trust_domain"}, "pki.trust_domain %q is not a host name such as space.example", c.PKI.TrustDomain)
	}

	if len(c.Routes) == 0 {
		v.addf([]any{"routes"}, "no routes: add at least one under routes:")
	}
	names := map[string]int{}
	for i := range c.Routes {
		r := &c.Routes[i]
		at := func(key string) []any { return []any{"routes", i, key} }
		if r.Name == "" {
			v.addf([]any{"routes", i}, "route %d has no name", i+1)
		} else if !routeName.MatchString(r.Name) {
			v.addf(at("name"), "route name %q must be lowercase letters, digits, '-', '_' or '.'", r.Name)
		} else if j, dup := names[r.Name]; dup {
			v.addf(at("name"), "route name %q is used twice (also on line %d)", r.Name, lineOf(v.root, "routes", j, "name"))
		} else {
			names[r.Name] = i
		}
		switch r.Protocol {
		case ProtocolPostgres, ProtocolRedis:
		case "":
			v.addf([]any{"routes", i}, "route %q has no protocol: set postgres or redis", r.Name)
		default:
			v.addf(at("protocol"), "route %q: protocol %q is not postgres or redis", r.Name, r.Protocol)
		}
		if r.Listen == "" {
			v.addf([]any{"routes", i}, "route %q has no listen address", r.Name)
		} else if err := checkHostPort(r.Listen); err != nil {
			v.addf(at("listen"), "route %q: listen: %v", r.Name, err)
		}
		for j, n := range r.ServerNames {
			if !validServerName(n) {
				v.addf([]any{"routes", i, "server_names", j}, "route %q: server name %q is not a host name (wildcards: *.example.com)", r.Name, n)
			}
		}
		for j, p := range r.AllowedClients {
			if err := tlsconf.CheckClientPattern(p); err != nil {
				v.addf([]any{"routes", i, "allowed_clients", j}, "route %q: allowed_clients: %v", r.Name, err)
			}
		}
		if r.AllowedClients != nil && len(r.AllowedClients) == 0 {
			v.addf(at("allowed_clients"), "route %q: allowed_clients is empty, so nobody could connect; remove the key for the default (certificates issued for this route) or list patterns", r.Name)
		}
		if (r.PostgresUserFromCert || len(r.PostgresUserMap) > 0) && r.Protocol != ProtocolPostgres {
			v.addf(at("postgres_user_from_cert"), "route %q: postgres_user_from_cert applies to postgres routes only", r.Name)
		}
		if len(r.PostgresUserMap) > 0 && !r.PostgresUserFromCert {
			v.addf(at("postgres_user_map"), "route %q: postgres_user_map needs postgres_user_from_cert: true", r.Name)
		}
		if r.Upstream == "" {
			v.addf([]any{"routes", i}, "route %q has no upstream address", r.Name)
		} else if err := checkHostPort(r.Upstream); err != nil {
			v.addf(at("upstream"), "route %q: upstream: %v", r.Name, err)
		}
		switch r.UpstreamTLS {
		case "", UpstreamTLSDisable:
			if r.UpstreamCAFile != "" || r.UpstreamCertFile != "" {
				v.addf(at("upstream_tls"), "route %q: upstream_ca_file and upstream_cert_file need upstream_tls: require or verify-full", r.Name)
			}
		case UpstreamTLSRequire:
		case UpstreamTLSVerifyFull:
			if r.UpstreamCAFile == "" {
				v.addf(at("upstream_tls"), "route %q: upstream_tls verify-full needs upstream_ca_file, the CA that signed the upstream's certificate", r.Name)
			}
		default:
			v.addf(at("upstream_tls"), "route %q: upstream_tls %q is not one of disable, require, verify-full", r.Name, r.UpstreamTLS)
		}
		if (r.UpstreamCertFile == "") != (r.UpstreamKeyFile == "") {
			v.addf(at("upstream_tls"), "route %q: upstream_cert_file and upstream_key_file go together", r.Name)
		}
		if r.IPRulesFile == "" {
			v.addf([]any{"routes", i}, "route %q has no ip_rules_file: every route needs one (an empty rules list allows nobody)", r.Name)
		}
		if r.MaxConnections < 0 {
			v.addf(at("max_connections"), "route %q: max_connections must not be negative, got %d", r.Name, r.MaxConnections)
		}
		if r.MaxIPRules < 0 {
			v.addf(at("max_ip_rules"), "route %q: max_ip_rules must be positive, got %d", r.Name, r.MaxIPRules)
		} else if r.MaxIPRules > MaxMaxIPRules {
			v.addf(at("max_ip_rules"), "route %q: max_ip_rules is at most %d (a rules file is read up to %d MiB), got %d",
				r.Name, MaxMaxIPRules, safefile.Rules.Max>>20, r.MaxIPRules)
		} else if r.MaxIPRules == 0 {
			r.MaxIPRules = DefaultMaxIPRules
		}
		if r.TLS != nil {
			r.TLS.validate(v, []any{"routes", i, "tls"}, "routes["+strconv.Itoa(i)+"].tls")
		}
		eff := r.EffectiveTLS(c.TLS)
		for _, k := range []struct{ key, val string }{
			{"cert_file", eff.CertFile}, {"key_file", eff.KeyFile}, {"client_ca_file", eff.ClientCAFile},
		} {
			if k.val == "" {
				v.addf([]any{"tls"}, "route %q has no tls.%s: set it under tls: or on the route", r.Name, k.key)
			}
		}
	}
	c.validateListeners(v)
}

// validateListeners checks the routes that share a listen address: they
// speak one protocol, and each but the default names its SNI server names,
// none claimed twice.
func (c *Config) validateListeners(v *validator) {
	byAddr := map[string][]int{}
	var order []string
	for i, r := range c.Routes {
		if r.Listen == "" {
			continue
		}
		if _, ok := byAddr[r.Listen]; !ok {
			order = append(order, r.Listen)
		}
		byAddr[r.Listen] = append(byAddr[r.Listen], i)
	}
	for _, addr := range order {
		idx := byAddr[addr]
		if len(idx) == 1 {
			continue
		}
		first := c.Routes[idx[0]]
		sharing := false // has the user set up SNI sharing at all?
		for _, i := range idx {
			sharing = sharing || len(c.Routes[i].ServerNames) > 0 || c.Routes[i].Default
		}
		if !sharing {
			for _, i := range idx[1:] {
				v.addf([]any{"routes", i, "listen"}, "route %q: listen address %s is already used by route %q; to share it, set server_names (SNI) on each route, or default: true on one",
					c.Routes[i].Name, addr, first.Name)
			}
			continue
		}
		claimed := map[string]string{}
		defaults := 0
		for k, i := range idx {
			r := c.Routes[i]
			at := []any{"routes", i, "listen"}
			other := first
			if k == 0 {
				other = c.Routes[idx[1]]
			}
			if r.Protocol != first.Protocol {
				v.addf(at, "route %q: listen address %s is shared with route %q, which speaks %s; routes sharing an address speak one protocol", r.Name, addr, first.Name, first.Protocol)
			}
			if r.Default {
				defaults++
			}
			if len(r.ServerNames) == 0 && !r.Default {
				v.addf(at, "route %q shares listen address %s with route %q: set server_names (SNI) on it too, or default: true", r.Name, addr, other.Name)
			}
			for _, n := range r.ServerNames {
				n = strings.ToLower(n)
				if other, dup := claimed[n]; dup {
					v.addf([]any{"routes", i, "server_names"}, "route %q: server name %q is already served by route %q on %s", r.Name, n, other, addr)
				}
				claimed[n] = r.Name
			}
		}
		if defaults > 1 {
			v.addf([]any{"routes", idx[0], "listen"}, "listen address %s has %d routes with default: true; at most one may be the default", addr, defaults)
		}
	}
	for i, r := range c.Routes {
		if r.Default && len(byAddr[r.Listen]) == 1 {
			v.addf([]any{"routes", i, "default"}, "route %q: default: true only matters on a listen address shared with other routes", r.Name)
		}
	}
}

// trimServerNameDots drops the trailing dot of fully qualified server
// names ("db.example.com."): SNI never carries it, so every comparison of
// names is made without it.
func (c *Config) trimServerNameDots() {
	for i := range c.Routes {
		for j, n := range c.Routes[i].ServerNames {
			c.Routes[i].ServerNames[j] = strings.TrimSuffix(n, ".")
		}
	}
}

// validServerName reports whether s is a DNS name, or *. followed by one.
func validServerName(s string) bool {
	s = strings.TrimPrefix(s, "*.")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, ch := range label {
			if !(ch == '-' || ch == '_' || ch >= '0' && ch <= '9' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z') {
				return false
			}
		}
	}
	return true
}

func (t *TLS) validate(v *validator, path []any, name string) {
	switch t.MinVersion {
	case "", "1.2", "1.3":
	default:
		v.addf(append(path, "min_version"), "%s.min_version %q: use \"1.2\" or \"1.3\" (older TLS is not offered)", name, t.MinVersion)
	}
}

// checkHostPort checks a host:port address with a numeric port.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (IPv6 as [::1]:5432)", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 1 to 65535", addr, port)
	}
	if host == "" {
		return fmt.Errorf("%q has no host: write 0.0.0.0:%s for every IPv4 address, [::]:%s for every IPv6 address", addr, port, port)
	}
	return nil
}

// resolvePaths makes every relative path absolute against the config file's directory.
func (c *Config) resolvePaths() {
	dir := "."
	if c.Path != "" {
		dir = filepath.Dir(c.Path)
	}
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	absTLS := func(t *TLS) {
		abs(&t.CertFile)
		abs(&t.KeyFile)
		abs(&t.ClientCAFile)
		abs(&t.CRLFile)
	}
	absTLS(&c.TLS)
	abs(&c.PKI.Dir)
	abs(&c.Admin.TokenFile)
	for i := range c.Routes {
		r := &c.Routes[i]
		abs(&r.IPRulesFile)
		abs(&r.UpstreamCAFile)
		abs(&r.UpstreamCertFile)
		abs(&r.UpstreamKeyFile)
		if r.TLS != nil {
			absTLS(r.TLS)
		}
	}
}

// validate checks admin.listen, that an address other than loopback
// comes with a token (/v1/status lists every live session and pprof shows
// the process's memory), and that ready_requires_upstream has a /readyz to
// act on.
func (a *Admin) validate(v *validator) {
	a.validateFleet(v)
	if a.Listen == "" {
		if a.ReadyRequiresUpstream {
			v.addf([]any{"admin", "ready_requires_upstream"}, "admin.ready_requires_upstream is set, but /readyz is served only on admin.listen, which is not: set admin.listen or remove the key")
		}
		return
	}
	if err := checkHostPort(a.Addr()); err != nil {
		v.addf([]any{"admin", "listen"}, "admin.listen: %v", err)
		return
	}
	if a.TokenFile == "" && !IsLoopback(a.Listen) {
		v.addf([]any{"admin", "listen"}, "admin.listen %s is not a loopback address, and the admin endpoint shows every live session: set admin.token_file (a bearer token) to serve it there, or listen on 127.0.0.1", a.Listen)
	}
}

// Addr is the address the admin endpoint binds: Listen, with an empty
// host (":9187") meaning 127.0.0.1, private unless said otherwise.
func (a Admin) Addr() string {
	host, port, err := net.SplitHostPort(a.Listen)
	if err == nil && host == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return a.Listen
}

// IsLoopback reports whether a listen address (host:port) binds loopback
// only: an empty host, 127.0.0.0/8 or ::1. A host name, even localhost, is
// not: what it resolves to is not in the config.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}
