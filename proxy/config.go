package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
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

// Config is the content of a spacegate config file (see README.md for every
// key). Paths in it are relative to the file; LoadConfig resolves them.
// A Config is a plain value: it holds no open files and is not shared.
type Config struct {
	Admin         AdminConfig         `yaml:"admin"`
	Log           LogConfig           `yaml:"log"`
	TLS           TLSConfig           `yaml:"tls"`
	PKI           PKIConfig           `yaml:"pki"`
	ProxyProtocol ProxyProtocolConfig `yaml:"proxy_protocol"`
	Limits        LimitsConfig        `yaml:"limits"`
	Routes        []RouteConfig       `yaml:"routes"`

	// Path is the file the config was read from; "" if parsed from bytes.
	Path string `yaml:"-"`

	root *yaml.Node // the parsed document, to name the line of a key in later errors
}

// AdminConfig is the admin HTTP endpoint. An empty Listen disables it.
type AdminConfig struct {
	// Listen is host:port. An empty host (":9187") means 127.0.0.1. Any
	// address that is not loopback needs TokenFile.
	Listen string `yaml:"listen"`
	// TokenFile holds the bearer token that /metrics, /v1/ and
	// /debug/pprof/ require (see readTokenFile for its rules); /healthz and
	// /readyz stay open for probes.
	TokenFile string `yaml:"token_file"`
	// Pprof serves Go's profiler under /debug/pprof/ on the admin address.
	// Off by default: profiles show internals to whoever reaches it.
	Pprof bool `yaml:"pprof"`
}

// LogConfig selects the log level and encoding.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug | info | warn | error; "" means info
	Format string `yaml:"format"` // json | console; "" means json
}

// TLSConfig names the TLS files. At the top level it holds the defaults of
// every route; on a route, each non-empty key overrides the default.
type TLSConfig struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
	CRLFile      string `yaml:"crl_file"`
	MinVersion   string `yaml:"min_version"` // "1.2" (default) or "1.3"
}

// PKIConfig is where `spacegate ca` and `spacegate certs` keep the space CA.
type PKIConfig struct {
	Dir string `yaml:"dir"`
	// TrustDomain is the host part of the SPIFFE-style URI SANs
	// (spiffe://TRUST_DOMAIN/route/ROUTE/client/ID) of issued client
	// certificates. Empty means DefaultTrustDomain.
	TrustDomain string `yaml:"trust_domain"`
}

// DefaultTrustDomain is the trust domain of issued client certificates
// when pki.trust_domain is not set.
const DefaultTrustDomain = "spacegate"

// ProxyProtocolConfig lists the peers allowed to send a PROXY protocol header.
type ProxyProtocolConfig struct {
	TrustedCIDRs []string `yaml:"trusted_cidrs"`
}

// LimitsConfig bounds what one gate accepts. Zero values take the defaults.
type LimitsConfig struct {
	MaxConnections int `yaml:"max_connections"` // default 10000
	// MaxConnectionsPerSource caps admitted connections per client address
	// (after PROXY protocol), so that one source cannot take every slot.
	// Default: a quarter of MaxConnections, at least 64 (offices behind one
	// NAT address are common), at most MaxConnections.
	MaxConnectionsPerSource int `yaml:"max_connections_per_source"`
	// MaxConnectionsPerCertificate caps admitted connections per client
	// certificate (by serial), with the same default.
	MaxConnectionsPerCertificate int `yaml:"max_connections_per_certificate"`
	// MaxPending caps connections accepted but not yet admitted or refused
	// (in handshake). When it is reached, the pending connection that has
	// made the least progress is closed to make room. Default 1000.
	MaxPending int `yaml:"max_pending"`
	// MaxPendingPerSource is the same bound per source address (an IPv6
	// /64), so that one source's idle sockets evict its own. Default 100.
	MaxPendingPerSource    int           `yaml:"max_pending_per_source"`
	HandshakeTimeout       time.Duration `yaml:"handshake_timeout"`        // default 10s
	UpstreamConnectTimeout time.Duration `yaml:"upstream_connect_timeout"` // default 5s
	DrainTimeout           time.Duration `yaml:"drain_timeout"`            // default 30s
	// ShutdownDelay is how long the gate keeps accepting after SIGTERM
	// while /readyz reports 503, so that a load balancer stops sending new
	// connections before the listeners close. Default 0.
	ShutdownDelay time.Duration `yaml:"shutdown_delay"`
}

// RouteConfig is one private backend exposed by the gate.
type RouteConfig struct {
	Name     string `yaml:"name"`
	Protocol string `yaml:"protocol"` // postgres | redis
	Listen   string `yaml:"listen"`
	// ServerNames are the TLS SNI names of the route ("db.example.com", or
	// "*.db.example.com" for one label). Routes that share a listen address
	// are told apart by them.
	ServerNames []string `yaml:"server_names"`
	// Default makes the route serve ClientHellos on its shared listen
	// address that carry no server name or one no route claims.
	Default  bool   `yaml:"default"`
	Upstream string `yaml:"upstream"`
	// UpstreamTLS is disable (default), require (encrypted, not verified,
	// as libpq's sslmode=require) or verify-full (chain and host name).
	UpstreamTLS        string `yaml:"upstream_tls"`
	UpstreamCAFile     string `yaml:"upstream_ca_file"`     // roots for verify-full
	UpstreamCertFile   string `yaml:"upstream_cert_file"`   // optional client certificate for the upstream
	UpstreamKeyFile    string `yaml:"upstream_key_file"`    // its key
	UpstreamServerName string `yaml:"upstream_server_name"` // name to verify; default: the upstream's host
	IPRulesFile        string `yaml:"ip_rules_file"`
	MaxIPRules         int    `yaml:"max_ip_rules"` // default 60
	// MaxConnections caps the route's admitted connections. Zero means
	// three quarters of limits.max_connections when the gate has several
	// routes, so that one cannot starve the others; with one route, only
	// limits.max_connections applies.
	MaxConnections int `yaml:"max_connections"`
	// AllowedClients are the client identities the route accepts: "*" (any
	// certificate of the space CA), or "cn:GLOB", "dns:GLOB", "uri:GLOB"
	// where * matches any run of characters. Nil means the certificates
	// issued for this route: "uri:spiffe://*/route/NAME/*".
	AllowedClients []string `yaml:"allowed_clients"`
	// PostgresUserFromCert requires the StartupMessage user to equal the
	// certificate's CN, or PostgresUserMap[CN] when the map has it, as
	// PostgreSQL's clientcert=verify-full does.
	PostgresUserFromCert bool              `yaml:"postgres_user_from_cert"`
	PostgresUserMap      map[string]string `yaml:"postgres_user_map"`
	Enabled              *bool             `yaml:"enabled"` // nil means true
	TLS                  *TLSConfig        `yaml:"tls"`     // per-route overrides of the top-level tls keys
}

// Values of upstream_tls.
const (
	UpstreamTLSDisable    = "disable"
	UpstreamTLSRequire    = "require"
	UpstreamTLSVerifyFull = "verify-full"
)

// Protocols a route can speak.
const (
	ProtocolPostgres = "postgres"
	ProtocolRedis    = "redis"
)

// Defaults applied by LoadConfig to keys left empty.
const (
	DefaultMaxConnections         = 10000
	DefaultHandshakeTimeout       = 10 * time.Second
	DefaultUpstreamConnectTimeout = 5 * time.Second
	DefaultDrainTimeout           = 30 * time.Second
	DefaultMaxIPRules             = 60
	DefaultMaxPending             = 1000
	DefaultMaxPendingPerSource    = 100
)

// defaultShareOf is the default cap per source and per certificate: a
// quarter of the gate's max_connections, at least 64, at most all of it.
func defaultShareOf(maxConnections int) int {
	return min(maxConnections, max(maxConnections/4, 64))
}

// MaxMaxIPRules is the largest max_ip_rules accepted: a rules file of that
// many rules fits under safefile.Rules (64 MiB) with room for long
// descriptions.
const MaxMaxIPRules = 200_000

// IsEnabled reports whether the route accepts connections.
func (r *RouteConfig) IsEnabled() bool { return r.Enabled == nil || *r.Enabled }

// EffectiveTLS returns the route's TLS keys: its own where set, else the defaults.
func (r *RouteConfig) EffectiveTLS(defaults TLSConfig) TLSConfig {
	t := defaults
	if r.TLS == nil {
		return t
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&t.CertFile, r.TLS.CertFile)
	set(&t.KeyFile, r.TLS.KeyFile)
	set(&t.ClientCAFile, r.TLS.ClientCAFile)
	set(&t.CRLFile, r.TLS.CRLFile)
	set(&t.MinVersion, r.TLS.MinVersion)
	return t
}

// ConfigError is one problem at one place of a config file. Line is 0 when
// the problem has no single place (a missing section, say).
type ConfigError struct {
	File string
	Line int
	Msg  string
}

func (e *ConfigError) Error() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	case e.File != "":
		return e.File + ": " + e.Msg
	case e.Line > 0:
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	return e.Msg
}

// Problems returns the individual errors inside err: the members of an
// errors.Join, recursively, or err itself. `spacegate check` prints one a line.
func Problems(err error) []error {
	if err == nil {
		return nil
	}
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var out []error
	for _, e := range j.Unwrap() {
		out = append(out, Problems(e)...)
	}
	return out
}

// LoadConfig reads, decodes and validates the config file at path, resolving
// relative paths against its directory. It reports every problem it finds,
// each naming file and line, joined with errors.Join. It does not open the
// files the config names; Build does.
func LoadConfig(path string) (*Config, error) {
	data, err := readConfig(path)
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig(data, path)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// readConfig reads the config file at path under [safefile.Config]: a
// FIFO, a device or a directory given as the config fails at once.
func readConfig(path string) ([]byte, error) {
	data, err := safefile.ReadFile(path, safefile.Config)
	if _, ok := errors.AsType[*fs.PathError](err); ok {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return data, err // the error names the file
}

// ParseConfig decodes and validates data as a config file named file.
func ParseConfig(data []byte, file string) (*Config, error) {
	cfg, err := parseConfig(data, file)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// Check validates the config file at path and every file it names, and
// returns every problem found, joined. Unlike LoadConfig followed by Build,
// it goes on to the named files even when the config itself has problems,
// so that one run of `spacegate check` lists them all.
func Check(path string) (*Snapshot, error) {
	data, err := readConfig(path)
	if err != nil {
		return nil, err
	}
	cfg, cfgErr := parseConfig(data, path)
	if cfg == nil {
		return nil, cfgErr
	}
	snap, buildErr := Build(cfg, 0)
	return snap, errors.Join(cfgErr, buildErr)
}

// parseConfig returns the config with relative paths resolved and every
// problem found. The config is nil only when data is not YAML at all.
func parseConfig(data []byte, file string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlProblems(file, err)
	}
	cfg := &Config{Path: file, root: &root}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var decodeErr error
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		// A TypeError still fills every field it could; keep validating so
		// that `check` shows all problems in one run.
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, yamlProblems(file, err)
		}
		decodeErr = yamlProblems(file, err)
	}
	cfg.trimServerNameDots()
	v := validator{file: file, root: &root}
	cfg.validate(&v)
	cfg.resolvePaths()
	return cfg, errors.Join(decodeErr, errors.Join(v.errs...))
}

// problemAt returns a problem located at the key named by path.
func (c *Config) problemAt(path []any, format string, args ...any) error {
	return &ConfigError{File: c.Path, Line: lineOf(c.root, path...), Msg: fmt.Sprintf(format, args...)}
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlProblems turns a yaml.v3 error into one ConfigError per line it reports.
func yamlProblems(file string, err error) error {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	var errs []error
	for _, m := range msgs {
		ce := &ConfigError{File: file, Msg: strings.TrimPrefix(m, "yaml: ")}
		if sm := yamlLine.FindStringSubmatch(m); sm != nil {
			ce.Line, _ = strconv.Atoi(sm[1])
			ce.Msg = sm[2]
		}
		ce.Msg = strings.Replace(ce.Msg, "in type proxy.", "in ", 1)
		errs = append(errs, ce)
	}
	return errors.Join(errs...)
}

// validator collects problems with the line of the key they concern.
type validator struct {
	file string
	root *yaml.Node
	errs []error
}

// addf records a problem at the key named by path ("routes", 0, "listen").
func (v *validator) addf(path []any, format string, args ...any) {
	v.errs = append(v.errs, &ConfigError{File: v.file, Line: lineOf(v.root, path...), Msg: fmt.Sprintf(format, args...)})
}

// lineOf returns the line of the value at path in a decoded document, or of
// the deepest ancestor that exists, or 0.
func lineOf(n *yaml.Node, path ...any) int {
	if n == nil {
		return 0
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, p := range path {
		var next *yaml.Node
		switch k := p.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == k {
						next = n.Content[i+1]
						line = n.Content[i].Line
						break
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && k < len(n.Content) {
				next = n.Content[k]
				line = next.Line
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
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

func (t *TLSConfig) validate(v *validator, path []any, name string) {
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
	absTLS := func(t *TLSConfig) {
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
