package proxy

import (
	"bytes"
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/allowlist"
	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/safefile"
	"github.com/spacegate/spacegate/tlsconf"
)

// Snapshot is everything the checks need, built from one Config and the
// files it names. It is immutable once built and safe for concurrent use;
// a reload builds a new one beside it and swaps it in whole.
type Snapshot struct {
	Config     *config.Config
	Generation uint64
	LoadedAt   time.Time
	// Fingerprint names the content in force (see fingerprint): equal on
	// replicas that serve the same files, whatever their paths.
	Fingerprint string
	Routes      []*Route
	// Listeners groups the routes by listen address, in config order.
	Listeners []*Listener

	byName         map[string]*Route
	byAddr         map[string]*Listener
	trustedProxies []netip.Prefix
	adminToken     []byte // of admin.token_file; nil when none
}

// Listener is one listen address and the routes served on it: one, or
// several told apart by TLS SNI.
type Listener struct {
	Addr     string
	Protocol string
	Routes   []*Route
	Default  *Route // serves unknown or missing SNI on a shared address; may be nil

	names     map[string]*Route // exact server names, lowercase
	wildcards []wildcardName    // "*.example.com" as ".example.com"
}

type wildcardName struct {
	suffix string
	route  *Route
}

// Shared reports whether several routes share the address.
func (l *Listener) Shared() bool { return len(l.Routes) > 1 }

// Route returns the route serving a TLS server name: the only route of an
// unshared listener whatever the name; else an exact name, then a wildcard
// matching one label, then the default. It returns nil when none serves it.
func (l *Listener) Route(serverName string) *Route {
	if !l.Shared() {
		return l.Routes[0]
	}
	name := strings.ToLower(strings.TrimSuffix(serverName, "."))
	if r, ok := l.names[name]; ok {
		return r
	}
	if _, parent, ok := strings.Cut(name, "."); ok {
		for _, w := range l.wildcards {
			if "."+parent == w.suffix {
				return w.route
			}
		}
	}
	return l.Default
}

// Names returns the server names served on the address, for messages.
func (l *Listener) Names() []string {
	var out []string
	for _, r := range l.Routes {
		out = append(out, r.ServerNames...)
	}
	return out
}

// Listener returns the listener on addr, or nil.
func (s *Snapshot) Listener(addr string) *Listener { return s.byAddr[addr] }

// Route is one route of a Snapshot with its loaded rules and TLS state.
type Route struct {
	config.Route
	Rules   *allowlist.Rules
	Matcher *allowlist.Matcher
	// RulesDigest names the rules in force by their ids and CIDRs.
	RulesDigest string
	Material    *tlsconf.Material
	// TLS serves the route's handshakes. It requests but does not verify a
	// client certificate: the gate verifies after the handshake so that the
	// client can be told why in its own protocol.
	TLS *tls.Config
	// Clients are the client identities the route accepts.
	Clients tlsconf.ClientPatterns
	// UpstreamTLS is the client config towards the upstream; nil when
	// upstream_tls is disable.
	UpstreamTLS *tls.Config
}

// Route returns the route called name, or nil.
func (s *Snapshot) Route(name string) *Route { return s.byName[name] }

// Build loads every file cfg names (rules files, certificates, keys, CA
// bundles, CRLs), validates them and returns a Snapshot. It reports every
// problem at once, joined with errors.Join, each naming its file.
func Build(cfg *config.Config, generation uint64) (*Snapshot, error) {
	s := &Snapshot{Config: cfg, Generation: generation, LoadedAt: time.Now(), byName: map[string]*Route{}, byAddr: map[string]*Listener{}}
	var errs []error
	if tok, err := loadAdminToken(cfg); err != nil {
		errs = append(errs, err)
	} else {
		s.adminToken = tok
	}
	for _, c := range cfg.ProxyProtocol.TrustedCIDRs {
		if p, err := netip.ParsePrefix(c); err == nil { // invalid ones were reported by validate
			s.trustedProxies = append(s.trustedProxies, netip.PrefixFrom(p.Addr().Unmap(), unmappedBits(p)).Masked())
		}
	}
	materials := map[tlsconf.Files]*tlsconf.Material{}
	materialErrs := map[tlsconf.Files]bool{}
	for i := range cfg.Routes {
		rc := cfg.Routes[i]
		r := &Route{Route: rc, Clients: tlsconf.NewClientPatterns(rc.Name, rc.AllowedClients)}
		if up, err := newUpstreamTLS(cfg, i); err != nil {
			errs = append(errs, err)
		} else {
			r.UpstreamTLS = up
		}
		if rules, err := loadRules(cfg, i); err != nil {
			errs = append(errs, err)
		} else if rules != nil {
			r.Rules = rules
			m, err := allowlist.NewMatcher(rules.Rules)
			if err != nil {
				errs = append(errs, fmt.Errorf("route %q: %w", rc.Name, err))
			}
			r.Matcher = m
		}

		t := rc.EffectiveTLS(cfg.TLS)
		files := tlsconf.Files{CertFile: t.CertFile, KeyFile: t.KeyFile, ClientCAFile: t.ClientCAFile, CRLFile: t.CRLFile}
		mat, seen := materials[files]
		if !seen && !materialErrs[files] {
			if err := checkTLSFiles(cfg, i); err != nil {
				materialErrs[files] = true
				errs = append(errs, err)
			} else if mat, err = tlsconf.Load(files); err != nil {
				// Report a shared file's problem once, not once per route.
				materialErrs[files] = true
				errs = append(errs, err)
			} else {
				materials[files] = mat
			}
		}
		// config.Load has validated min_version; an invalid one was reported there.
		minVersion, _ := tlsconf.ParseMinVersion(cmp.Or(t.MinVersion, "1.2"))
		if mat != nil {
			r.Material = mat
			var protos []string
			if rc.Protocol == config.ProtocolPostgres {
				// Mandatory for PostgreSQL 17 direct TLS and harmless for
				// classic negotiation: libpq offers it in both cases.
				protos = []string{alpnPostgres}
			}
			r.TLS = tlsconf.ServerConfig(mat, max(minVersion, tls.VersionTLS12), protos)
		}
		s.Routes = append(s.Routes, r)
		s.byName[rc.Name] = r
		s.addToListener(r)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, r := range s.Routes {
		r.RulesDigest = rulesDigest(r.Rules)
	}
	s.Fingerprint = fingerprint(s)
	return s, nil
}

// Check validates the config file at path and every file it names, and
// returns every problem found, joined. Unlike config.Load followed by
// Build, it goes on to the named files even when the config itself has
// problems, so that one run of `spacegate check` lists them all.
func Check(path string) (*Snapshot, error) {
	cfg, cfgErr := config.LoadPartial(path)
	if cfg == nil {
		return nil, cfgErr
	}
	snap, buildErr := Build(cfg, 0)
	return snap, errors.Join(cfgErr, buildErr)
}

// addToListener files r under its listen address.
func (s *Snapshot) addToListener(r *Route) {
	l := s.byAddr[r.Listen]
	if l == nil {
		l = &Listener{Addr: r.Listen, Protocol: r.Protocol, names: map[string]*Route{}}
		s.byAddr[r.Listen] = l
		s.Listeners = append(s.Listeners, l)
	}
	l.Routes = append(l.Routes, r)
	if r.Default {
		l.Default = r
	}
	for _, n := range r.ServerNames {
		n = strings.ToLower(n)
		if suffix, ok := strings.CutPrefix(n, "*"); ok {
			l.wildcards = append(l.wildcards, wildcardName{suffix: suffix, route: r})
		} else {
			l.names[n] = r
		}
	}
}

// newUpstreamTLS builds route i's client TLS config towards its upstream, or
// nil when upstream_tls is disable.
func newUpstreamTLS(c *config.Config, i int) (*tls.Config, error) {
	rc := &c.Routes[i]
	if rc.UpstreamTLS == "" || rc.UpstreamTLS == config.UpstreamTLSDisable {
		return nil, nil
	}
	host, _, _ := net.SplitHostPort(rc.Upstream)
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: cmp.Or(rc.UpstreamServerName, host),
		// require encrypts without checking who answers, as libpq's
		// sslmode=require does; verify-full checks chain and name.
		InsecureSkipVerify: rc.UpstreamTLS == config.UpstreamTLSRequire,
	}
	if rc.Protocol == config.ProtocolPostgres {
		cfg.NextProtos = []string{alpnPostgres}
	}
	var errs []error
	if rc.UpstreamCAFile != "" {
		pem, err := safefile.ReadFile(rc.UpstreamCAFile, safefile.UpstreamCA)
		if err != nil {
			errs = append(errs, c.Errorf(config.Key{"routes", i, "upstream_ca_file"}, "route %q: upstream_ca_file: %v", rc.Name, err))
		} else {
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				errs = append(errs, c.Errorf(config.Key{"routes", i, "upstream_ca_file"}, "route %q: upstream_ca_file %s holds no PEM certificate", rc.Name, rc.UpstreamCAFile))
			}
		}
	}
	if rc.UpstreamCertFile != "" {
		cert, err := loadKeyPair(rc.UpstreamCertFile, rc.UpstreamKeyFile)
		if err != nil {
			errs = append(errs, c.Errorf(config.Key{"routes", i, "upstream_cert_file"}, "route %q: upstream client certificate: %v", rc.Name, err))
		} else {
			cfg.Certificates = []tls.Certificate{cert}
		}
	}
	return cfg, errors.Join(errs...)
}

// loadKeyPair is [tls.LoadX509KeyPair] with the files read through
// [safefile.ReadFile].
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := safefile.ReadFile(certFile, safefile.Certificate)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := safefile.ReadFile(keyFile, safefile.Key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// unmappedBits returns p's prefix length after unmapping an IPv4-mapped
// IPv6 prefix (::ffff:10.0.0.0/104 is 10.0.0.0/8).
func unmappedBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return max(p.Bits()-96, 0)
	}
	return p.Bits()
}

// loadRules loads route i's rules file. A file that does not exist is a
// problem at the config key naming it; problems inside it name its own
// lines. It returns nil, nil when the route names no file (already reported).
func loadRules(c *config.Config, i int) (*allowlist.Rules, error) {
	rc := &c.Routes[i]
	if rc.IPRulesFile == "" {
		return nil, nil
	}
	// A blank file is most likely a write in progress (truncate, then
	// write) seen between its two steps. Read as an empty allowlist it
	// would cut every session of the route; refusing it keeps the old rules
	// until the write lands. An empty list on purpose is "rules: []".
	data, err := safefile.ReadFile(rc.IPRulesFile, safefile.Rules)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, c.Errorf(config.Key{"routes", i, "ip_rules_file"}, "route %q: ip_rules_file %s does not exist", rc.Name, rc.IPRulesFile)
	case err != nil:
		return nil, c.Errorf(config.Key{"routes", i, "ip_rules_file"}, "route %q: %v", rc.Name, err)
	case len(bytes.TrimSpace(data)) == 0:
		return nil, c.Errorf(config.Key{"routes", i, "ip_rules_file"},
			"route %q: ip_rules_file %s is empty (a write in progress?); to allow nobody, write \"rules: []\"", rc.Name, rc.IPRulesFile)
	}
	rules, err := allowlist.ParseFile(rc.IPRulesFile, data)
	switch {
	case err != nil:
		return nil, err
	case len(rules.Rules) > rc.MaxIPRules:
		return nil, c.Errorf(config.Key{"routes", i, "max_ip_rules"}, "route %q: %s holds %d rules, more than max_ip_rules (%d)", rc.Name, rc.IPRulesFile, len(rules.Rules), rc.MaxIPRules)
	}
	return rules, nil
}

// checkTLSFiles reports, at the config key that names it, each TLS file of
// route i that is unset or does not exist, so that tlsconf.Load is only
// asked about files that are there.
func checkTLSFiles(c *config.Config, i int) error {
	rc := &c.Routes[i]
	var errs []error
	for _, k := range []struct {
		key, top, own string
	}{
		{"cert_file", c.TLS.CertFile, tlsOwn(rc.TLS, func(t *config.TLS) string { return t.CertFile })},
		{"key_file", c.TLS.KeyFile, tlsOwn(rc.TLS, func(t *config.TLS) string { return t.KeyFile })},
		{"client_ca_file", c.TLS.ClientCAFile, tlsOwn(rc.TLS, func(t *config.TLS) string { return t.ClientCAFile })},
		{"crl_file", c.TLS.CRLFile, tlsOwn(rc.TLS, func(t *config.TLS) string { return t.CRLFile })},
	} {
		path, at := k.top, config.Key{"tls", k.key}
		if k.own != "" {
			path, at = k.own, config.Key{"routes", i, "tls", k.key}
		}
		if path == "" {
			continue // a missing required key is reported by validate
		}
		if _, err := os.Stat(path); err != nil {
			errs = append(errs, c.Errorf(at, "tls.%s %s: %v", k.key, path, errors.Unwrap(err)))
		}
	}
	return errors.Join(errs...)
}

// loadAdminToken reads admin.token_file; nil when there is none.
func loadAdminToken(c *config.Config) ([]byte, error) {
	if c.Admin.TokenFile == "" {
		return nil, nil
	}
	tok, err := admin.ReadTokenFile(c.Admin.TokenFile)
	if err != nil {
		return nil, c.Errorf(config.Key{"admin", "token_file"}, "admin.token_file: %v", err)
	}
	return tok, nil
}

func tlsOwn(t *config.TLS, get func(*config.TLS) string) string {
	if t == nil {
		return ""
	}
	return get(t)
}
