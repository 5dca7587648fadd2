package config

import (
	"strings"
	"testing"
)

const minimalConfig = `tls:
  cert_file: pki/server.crt
  key_file: pki/server.key
  client_ca_file: pki/ca.crt
routes:
  - name: db
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: 127.0.0.1:5432
    ip_rules_file: rules/db.yaml
`

func TestParseDefaultsAndPaths(t *testing.T) {
	cfg, err := Parse([]byte(minimalConfig), "/etc/spacegate/spacegate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Limits
	if l.MaxConnections != DefaultMaxConnections || l.HandshakeTimeout != DefaultHandshakeTimeout ||
		l.UpstreamConnectTimeout != DefaultUpstreamConnectTimeout || l.DrainTimeout != DefaultDrainTimeout {
		t.Errorf("limits defaults = %+v", l)
	}
	r := cfg.Routes[0]
	if r.MaxIPRules != 60 || !r.IsEnabled() {
		t.Errorf("route defaults = %+v", r)
	}
	if r.IPRulesFile != "/etc/spacegate/rules/db.yaml" || cfg.TLS.CertFile != "/etc/spacegate/pki/server.crt" {
		t.Errorf("paths not resolved against the config dir: %q %q", r.IPRulesFile, cfg.TLS.CertFile)
	}
}

func TestParseProblems(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want []string // each must appear among the problems
	}{
		{"unknown key", minimalConfig + "    colour: blue\n", []string{"c.yaml:11: field colour not found in Route"}},
		{"bad duration", "limits:\n  handshake_timeout: 10x\n" + minimalConfig, []string{"c.yaml:2:", "10x"}},
		{"negative duration", "limits:\n  drain_timeout: -1s\n" + minimalConfig, []string{"c.yaml:2: limits.drain_timeout must be positive"}},
		{"duplicate route name and listen", minimalConfig + `  - name: db
    protocol: redis
    listen: 127.0.0.1:6432
    upstream: 127.0.0.1:6379
    ip_rules_file: rules/db.yaml
`, []string{`c.yaml:11: route name "db" is used twice (also on line 6)`, `c.yaml:13: route "db": listen address 127.0.0.1:6432 is already used by route "db"; to share it, set server_names (SNI) on each route, or default: true on one`}},
		{"bad protocol and addresses", `tls: {cert_file: a, key_file: b, client_ca_file: c}
routes:
  - name: x
    protocol: mysql
    listen: 6432
    upstream: "db:99999"
`, []string{`c.yaml:4: route "x": protocol "mysql"`, `c.yaml:5: route "x": listen: "6432" is not host:port`, `c.yaml:6: route "x": upstream: "db:99999": port`, `c.yaml:3: route "x" has no ip_rules_file`}},
		{"no tls files", "routes:\n  - name: db\n    protocol: postgres\n    listen: 127.0.0.1:1\n    upstream: 127.0.0.1:2\n    ip_rules_file: r\n",
			[]string{`route "db" has no tls.cert_file`, `route "db" has no tls.client_ca_file`}},
		{"no routes", "admin:\n  listen: 127.0.0.1:9187\n", []string{"no routes"}},
		{"max_ip_rules past what a rules file can hold", minimalConfig + "    max_ip_rules: 200001\n",
			[]string{`c.yaml:11: route "db": max_ip_rules is at most 200000 (a rules file is read up to 64 MiB), got 200001`}},
		{"bad min_version", "tls:\n  min_version: \"1.0\"\n" + strings.TrimPrefix(minimalConfig, "tls:\n"), []string{`c.yaml:2: tls.min_version "1.0"`}},
		{"bad log level", "log:\n  level: loud\n" + minimalConfig, []string{`c.yaml:2: log.level "loud"`}},
		{"not yaml", "routes: [\n", []string{"c.yaml:"}},
		{"shared listener without names", minimalConfig + `  - name: db2
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: 127.0.0.1:5433
    ip_rules_file: r
`, []string{`c.yaml:13: route "db2": listen address 127.0.0.1:6432 is already used by route "db"`}},
		{"shared listener, one route without names", minimalConfig + "    server_names: [a.test]\n" + `  - name: db2
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: 127.0.0.1:5433
    ip_rules_file: r
`, []string{`c.yaml:14: route "db2" shares listen address 127.0.0.1:6432 with route "db": set server_names (SNI) on it too, or default: true`}},
		{"shared listener: mixed protocols, name claimed twice, two defaults", `tls: {cert_file: a, key_file: b, client_ca_file: c}
routes:
  - {name: a, protocol: postgres, listen: "127.0.0.1:1", server_names: [x.test], default: true, upstream: "h:1", ip_rules_file: r}
  - {name: b, protocol: redis, listen: "127.0.0.1:1", server_names: [X.test], default: true, upstream: "h:1", ip_rules_file: r}
`, []string{`route "b": listen address 127.0.0.1:1 is shared with route "a", which speaks postgres`, `c.yaml:4: route "b": server name "x.test" is already served by route "a"`, "has 2 routes with default: true"}},
		{"bad server name and client pattern", minimalConfig + "    server_names: [\"bad name\"]\n    allowed_clients: [\"CN=x\"]\n",
			[]string{`c.yaml:11: route "db": server name "bad name" is not a host name`, `c.yaml:12: route "db": allowed_clients: pattern "CN=x"`}},
		{"empty allowed_clients", minimalConfig + "    allowed_clients: []\n", []string{"allowed_clients is empty, so nobody could connect"}},
		{"upstream tls keys", minimalConfig + "    upstream_tls: verify-full\n    upstream_cert_file: c.pem\n",
			[]string{"verify-full needs upstream_ca_file", "upstream_cert_file and upstream_key_file go together"}},
		{"user map without binding", minimalConfig + "    postgres_user_map: {a: b}\n", []string{"postgres_user_map needs postgres_user_from_cert: true"}},
		{"proxy cidr", "proxy_protocol:\n  trusted_cidrs: [10.0.0.0/33]\n" + minimalConfig, []string{`c.yaml:2: proxy_protocol.trusted_cidrs: "10.0.0.0/33" is not a CIDR block`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "c.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			var all []string
			for _, p := range Problems(err) {
				all = append(all, p.Error())
			}
			joined := strings.Join(all, "\n")
			for _, w := range tc.want {
				if !strings.Contains(joined, w) {
					t.Errorf("problems lack %q; got:\n%s", w, joined)
				}
			}
		})
	}
}

func TestEffectiveTLS(t *testing.T) {
	def := TLS{CertFile: "a", KeyFile: "b", ClientCAFile: "c", MinVersion: "1.2"}
	r := Route{TLS: &TLS{ClientCAFile: "other-ca", MinVersion: "1.3"}}
	got := r.EffectiveTLS(def)
	want := TLS{CertFile: "a", KeyFile: "b", ClientCAFile: "other-ca", MinVersion: "1.3"}
	if got != want {
		t.Fatalf("EffectiveTLS = %+v, want %+v", got, want)
	}

}

// TestLimitDefaults: by default no source, certificate or route can take
// every slot of the gate, and a negative bound is a config error.
func TestLimitDefaults(t *testing.T) {
	twoRoutes := minimalConfig + `  - name: cache
    protocol: redis
    listen: 127.0.0.1:6380
    upstream: 127.0.0.1:6379
    ip_rules_file: rules/db.yaml
`
	for _, tc := range []struct {
		name                      string
		yaml                      string
		perSource, perCert, route int
		pending, pendingPerSource int
	}{
		{"defaults", minimalConfig, 2500, 2500, 0, 1000, 100},
		{"several routes share", twoRoutes, 2500, 2500, 7500, 1000, 100},
		{"a small gate", "limits:\n  max_connections: 100\n" + twoRoutes, 64, 64, 75, 1000, 100},
		{"a tiny gate", "limits:\n  max_connections: 10\n" + minimalConfig, 10, 10, 0, 1000, 100},
		{"set", "limits:\n  max_connections_per_source: 7\n  max_connections_per_certificate: 3\n  max_pending: 20\n  max_pending_per_source: 5\n" + minimalConfig, 7, 3, 0, 20, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.yaml), "/etc/spacegate/spacegate.yaml")
			if err != nil {
				t.Fatal(err)
			}
			l := cfg.Limits
			if l.MaxConnectionsPerSource != tc.perSource || l.MaxConnectionsPerCertificate != tc.perCert ||
				l.MaxPending != tc.pending || l.MaxPendingPerSource != tc.pendingPerSource {
				t.Errorf("limits = %+v", l)
			}
			for _, r := range cfg.Routes {
				if r.MaxConnections != tc.route {
					t.Errorf("route %s: max_connections %d, want %d", r.Name, r.MaxConnections, tc.route)
				}
			}
		})
	}
	for _, key := range []string{"max_connections_per_source", "max_connections_per_certificate", "max_pending", "max_pending_per_source"} {
		_, err := Parse([]byte("limits:\n  "+key+": -1\n"+minimalConfig), "/etc/spacegate/c.yaml")
		if err == nil || !strings.Contains(err.Error(), "limits."+key+" must not be negative") {
			t.Errorf("%s: -1: %v", key, err)
		}
	}
	if _, err := Parse([]byte(minimalConfig+"    max_connections: -1\n"), "/etc/spacegate/c.yaml"); err == nil ||
		!strings.Contains(err.Error(), `route "db": max_connections must not be negative`) {
		t.Errorf("route max_connections -1: %v", err)
	}
}

func TestAdminListenRule(t *testing.T) {
	for _, tc := range []struct {
		admin string
		want  string // "" for no problem
	}{
		{"admin:\n  listen: 127.0.0.1:9187\n", ""},
		{"admin:\n  listen: 127.0.0.2:9187\n", ""},
		{"admin:\n  listen: \"[::1]:9187\"\n", ""},
		{"admin:\n  listen: :9187\n", ""},
		{"admin:\n  listen: 0.0.0.0:9187\n  token_file: admin.token\n", ""},
		{"admin:\n  listen: 0.0.0.0:9187\n", "c.yaml:2: admin.listen 0.0.0.0:9187 is not a loopback address, and the admin endpoint shows every live session: set admin.token_file"},
		{"admin:\n  pprof: true\n  listen: 192.0.2.10:9187\n", "c.yaml:3: admin.listen 192.0.2.10:9187 is not a loopback address"},
		{"admin:\n  listen: \"[::]:9187\"\n", "c.yaml:2: admin.listen [::]:9187 is not a loopback address"},
		{"admin:\n  listen: localhost:9187\n", "c.yaml:2: admin.listen localhost:9187 is not a loopback address"},
		{"admin:\n  listen: :0\n", `c.yaml:2: admin.listen: "127.0.0.1:0": port "0" is not a number`},
		{"admin:\n  listen: :9187\n  ready_requires_upstream: true\n", ""},
		{"admin:\n  ready_requires_upstream: false\n", ""},
		{"admin:\n  ready_requires_upstream: true\n", "c.yaml:2: admin.ready_requires_upstream is set, but /readyz is served only on admin.listen"},
		{"admin:\n  listen: :9187\n  ready_requires_upstream: sometimes\n", "c.yaml:3"},
	} {
		_, err := Parse([]byte(tc.admin+minimalConfig), "c.yaml")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.admin, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: error %v, want %q", tc.admin, err, tc.want)
		}
	}
	cfg, err := Parse([]byte("admin:\n  listen: 0.0.0.0:9187\n  token_file: admin.token\n"+minimalConfig), "/etc/spacegate/c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Admin.TokenFile != "/etc/spacegate/admin.token" {
		t.Errorf("token_file not resolved against the config's directory: %q", cfg.Admin.TokenFile)
	}
	if got := cfg.Files(); len(got) < 2 || got[1] != "/etc/spacegate/admin.token" {
		t.Errorf("Files() = %q: the reload must watch the token file", got)
	}
}

// TestAdminFleet: admin.fleet takes http(s) URLs of host:port and
// dns:NAME:PORT entries, and names the line of a bad one.
func TestAdminFleet(t *testing.T) {
	const head = "admin:\n  listen: 127.0.0.1:9187\n  fleet:\n"
	for _, tc := range []struct {
		entries string
		want    string // "" for no problem
	}{
		{"    - http://10.0.0.11:9187\n    - https://gate-2.example.com:9187/\n    - \"http://[2001:db8::1]:9187\"\n    - dns:spacegate-admin.edge.svc.cluster.local:9187\n", ""},
		{"    - http://10.0.0.11:9187\n    - ftp://10.0.0.12:9187\n", `c.yaml:5: admin.fleet: "ftp://10.0.0.12:9187": want http://HOST:PORT`},
		{"    - http://10.0.0.11\n", `c.yaml:4: admin.fleet: "http://10.0.0.11": want the host and port`},
		{"    - http://10.0.0.11:9187/v1/status\n", `c.yaml:4: admin.fleet: "http://10.0.0.11:9187/v1/status": nothing may follow the port`},
		{"    - http://admin:secret@10.0.0.11:9187\n", `c.yaml:4: admin.fleet: "http://admin:secret@10.0.0.11:9187": no user or password`},
		{"    - http://10.0.0.11:99999\n", `port "99999" is not a number from 1 to 65535`},
		{"    - dns:gates.local\n", `c.yaml:4: admin.fleet: "dns:gates.local": want dns:NAME:PORT`},
		{"    - dns:gates..local:9187\n", `"gates..local" is not a DNS name`},
		{"    - dns:gates.local:x\n", `port "x" is not a number`},
		{"    - 10.0.0.11:9187\n", `c.yaml:4: admin.fleet: "10.0.0.11:9187"`},
		{"    - http://10.0.0.11:9187\n    - http://10.0.0.11:9187/\n", "c.yaml:5: admin.fleet: http://10.0.0.11:9187/ is listed twice (entry 1 and 2)"},
	} {
		_, err := Parse([]byte(head+tc.entries+minimalConfig), "c.yaml")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.entries, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: error %v, want %q", tc.entries, err, tc.want)
		}
	}
	if _, err := Parse([]byte("admin:\n  fleet: [http://10.0.0.11:9187]\n"+minimalConfig), "c.yaml"); err == nil || !strings.Contains(err.Error(), "c.yaml:2: admin.fleet is served at /v1/fleet of the admin endpoint: set admin.listen") {
		t.Errorf("fleet without listen: %v", err)
	}
	e, err := ParseFleetEntry("dns:gates.local:9187")
	if err != nil || e.ReplicaURL("2001:db8::7") != "http://[2001:db8::7]:9187" || e.String() != "dns:gates.local:9187" {
		t.Errorf("dns entry: %+v, %v", e, err)
	}
}
