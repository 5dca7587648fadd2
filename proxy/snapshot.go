package proxy

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/spacegate/spacegate/allowlist"
	"github.com/spacegate/spacegate/tlsconf"
)

// Snapshot is everything the checks need, built from one Config and the
// files it names. It is immutable once built and safe for concurrent use;
// a reload builds a new one beside it and swaps it in whole.
type Snapshot struct {
	Config     *Config
	Generation uint64
	LoadedAt   time.Time
	Routes     []*Route
	byName     map[string]*Route
}

// Route is one route of a Snapshot with its loaded rules and TLS state.
type Route struct {
	RouteConfig
	Rules    *allowlist.Rules
	Matcher  *allowlist.Matcher
	Material *tlsconf.Material
	// TLS serves the route's handshakes. It requests but does not verify a
	// client certificate: the gate verifies after the handshake so that the
	// client can be told why in its own protocol.
	TLS *tls.Config
}

// Route returns the route called name, or nil.
func (s *Snapshot) Route(name string) *Route { return s.byName[name] }

// Build loads every file cfg names (rules files, certificates, keys, CA
// bundles, CRLs), validates them and returns a Snapshot. It reports every
// problem at once, joined with errors.Join, each naming its file.
func Build(cfg *Config, generation uint64) (*Snapshot, error) {
	s := &Snapshot{Config: cfg, Generation: generation, LoadedAt: time.Now(), byName: map[string]*Route{}}
	var errs []error
	materials := map[tlsconf.Files]*tlsconf.Material{}
	materialErrs := map[tlsconf.Files]bool{}
	for i := range cfg.Routes {
		rc := cfg.Routes[i]
		r := &Route{RouteConfig: rc}
		if rules, err := cfg.loadRules(i); err != nil {
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
			if err := cfg.checkTLSFiles(i); err != nil {
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
		// LoadConfig has validated min_version; an invalid one was reported there.
		minVersion, _ := tlsconf.ParseMinVersion(cmp.Or(t.MinVersion, "1.2"))
		if mat != nil {
			r.Material = mat
			var protos []string
			if rc.Protocol == ProtocolPostgres {
				// Mandatory for PostgreSQL 17 direct TLS and harmless for
				// classic negotiation: libpq offers it in both cases.
				protos = []string{alpnPostgres}
			}
			r.TLS = tlsconf.ServerConfig(mat, max(minVersion, tls.VersionTLS12), protos)
		}
		s.Routes = append(s.Routes, r)
		s.byName[rc.Name] = r
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// loadRules loads route i's rules file. A file that does not exist is a
// problem at the config key naming it; problems inside it name its own
// lines. It returns nil, nil when the route names no file (already reported).
func (c *Config) loadRules(i int) (*allowlist.Rules, error) {
	rc := &c.Routes[i]
	if rc.IPRulesFile == "" {
		return nil, nil
	}
	rules, err := allowlist.Load(rc.IPRulesFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, c.problemAt([]any{"routes", i, "ip_rules_file"}, "route %q: ip_rules_file %s does not exist", rc.Name, rc.IPRulesFile)
	case err != nil:
		return nil, err
	case len(rules.Rules) > rc.MaxIPRules:
		return nil, c.problemAt([]any{"routes", i, "max_ip_rules"}, "route %q: %s holds %d rules, more than max_ip_rules (%d)", rc.Name, rc.IPRulesFile, len(rules.Rules), rc.MaxIPRules)
	}
	return rules, nil
}

// checkTLSFiles reports, at the config key that names it, each TLS file of
// route i that is unset or does not exist, so that tlsconf.Load is only
// asked about files that are there.
func (c *Config) checkTLSFiles(i int) error {
	rc := &c.Routes[i]
	var errs []error
	for _, k := range []struct {
		key, top, own string
	}{
		{"cert_file", c.TLS.CertFile, tlsOwn(rc.TLS, func(t *TLSConfig) string { return t.CertFile })},
		{"key_file", c.TLS.KeyFile, tlsOwn(rc.TLS, func(t *TLSConfig) string { return t.KeyFile })},
		{"client_ca_file", c.TLS.ClientCAFile, tlsOwn(rc.TLS, func(t *TLSConfig) string { return t.ClientCAFile })},
		{"crl_file", c.TLS.CRLFile, tlsOwn(rc.TLS, func(t *TLSConfig) string { return t.CRLFile })},
	} {
		path, at := k.top, []any{"tls", k.key}
		if k.own != "" {
			path, at = k.own, []any{"routes", i, "tls", k.key}
		}
		if path == "" {
			continue // a missing required key is reported by validate
		}
		if _, err := os.Stat(path); err != nil {
			errs = append(errs, c.problemAt(at, "tls.%s %s: %v", k.key, path, errors.Unwrap(err)))
		}
	}
	return errors.Join(errs...)
}

func tlsOwn(t *TLSConfig, get func(*TLSConfig) string) string {
	if t == nil {
		return ""
	}
	return get(t)
}
