package config

import (
	"slices"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the content of a spacegate config file (see README.md for every
// key). Paths in it are relative to the file; Load resolves them.
// A Config is a plain value: it holds no open files and is not shared.
type Config struct {
	Admin         Admin         `yaml:"admin"`
	Log           Log           `yaml:"log"`
	TLS           TLS           `yaml:"tls"`
	PKI           PKI           `yaml:"pki"`
	ProxyProtocol ProxyProtocol `yaml:"proxy_protocol"`
	Limits        Limits        `yaml:"limits"`
	Routes        []Route       `yaml:"routes"`

	// Path is the file the config was read from; "" if parsed from bytes.
	Path string `yaml:"-"`

	root *yaml.Node // the parsed document, to name the line of a key in later errors
}

// Admin is the admin HTTP endpoint. An empty Listen disables it.
type Admin struct {
	// Listen is host:port. An empty host (":9187") means 127.0.0.1. Any
	// address that is not loopback needs TokenFile.
	Listen string `yaml:"listen"`
	// TokenFile holds the bearer token that /metrics, /v1/ and
	// /debug/pprof/ require (see proxy.ReadTokenFile for its rules);
	// /healthz and /readyz stay open for probes.
	TokenFile string `yaml:"token_file"`
	// Pprof serves Go's profiler under /debug/pprof/ on the admin address.
	// Off by default: profiles show internals to whoever reaches it.
	Pprof bool `yaml:"pprof"`
	// Fleet lists the admin endpoints of every replica that serves the
	// same routes behind one balancer, this one included: URLs
	// (http://10.0.0.11:9187), and dns:NAME:PORT entries whose every A
	// and AAAA record is a replica (a Kubernetes headless Service).
	// /v1/fleet asks them all, with the token of TokenFile. Empty means
	// the fleet is this replica alone.
	Fleet []string `yaml:"fleet"`
	// ReadyRequiresUpstream makes /readyz answer 503 while no enabled
	// route's upstream answers the gate's probes. Off by default: with it,
	// a database outage takes every replica out of the load balancer, and
	// clients get connection refused rather than a FATAL naming the route.
	// For a balancer that should fail over to another site.
	ReadyRequiresUpstream bool `yaml:"ready_requires_upstream"`
}

// Log selects the log level and encoding.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error; "" means info
	Format string `yaml:"format"` // json | console; "" means json
}

// TLS names the TLS files. At the top level it holds the defaults of
// every route; on a route, each non-empty key overrides the default.
type TLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
	CRLFile      string `yaml:"crl_file"`
	MinVersion   string `yaml:"min_version"` // "1.2" (default) or "1.3"
}

// PKI is where `spacegate ca` and `spacegate certs` keep the space CA.
type PKI struct {
	Dir string `yaml:"dir"`
	// TrustDomain is the host part of the SPIFFE-style URI SANs
	// (spiffe://TRUST_DOMAIN/route/ROUTE/client/ID) of issued client
	// certificates. Empty means DefaultTrustDomain.
	TrustDomain string `yaml:"trust_domain"`
}

// DefaultTrustDomain is the trust domain of issued client certificates
// when pki.trust_domain is not set.
const DefaultTrustDomain = "spacegate"

// ProxyProtocol lists the peers allowed to send a PROXY protocol header.
type ProxyProtocol struct {
	TrustedCIDRs []string `yaml:"trusted_cidrs"`
}

// Limits bounds what one gate accepts. Zero values take the defaults.
type Limits struct {
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

// Route is one private backend exposed by the gate.
type Route struct {
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
	TLS                  *TLS              `yaml:"tls"`     // per-route overrides of the top-level tls keys
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

// Defaults applied by Load to keys left empty.
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
func (r *Route) IsEnabled() bool { return r.Enabled == nil || *r.Enabled }

// EffectiveTLS returns the route's TLS keys: its own where set, else the defaults.
func (r *Route) EffectiveTLS(defaults TLS) TLS {
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

// Files returns every file the config names: itself, the admin token, the
// rules files, the TLS files of every route and the upstream TLS files,
// without duplicates. A reload watches exactly these.
func (c *Config) Files() []string {
	var out []string
	add := func(paths ...string) {
		for _, p := range paths {
			if p != "" && !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	add(c.Path, c.Admin.TokenFile)
	for i := range c.Routes {
		r := &c.Routes[i]
		t := r.EffectiveTLS(c.TLS)
		add(r.IPRulesFile, t.CertFile, t.KeyFile, t.ClientCAFile, t.CRLFile, r.UpstreamCAFile, r.UpstreamCertFile, r.UpstreamKeyFile)
	}
	return out
}
