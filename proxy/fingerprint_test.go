package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/testenv"
)

// fingerprintDir writes a config with two routes and their rules files
// into a new directory (named differently each time, so paths differ),
// with the PKI's files copied in, and returns the config's path.
func fingerprintDir(t *testing.T, pki *testenv.PKI, rulesDB, rulesCache string) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range map[string]string{"server.crt": pki.ServerCertFile, "server.key": pki.ServerKeyFile, "ca.crt": pki.CAFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name), string(b))
	}
	if err := os.Chmod(filepath.Join(dir, "server.key"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "db.yaml"), rulesDB)
	writeFile(t, filepath.Join(dir, "cache.yaml"), rulesCache)
	path := filepath.Join(dir, "spacegate.yaml")
	writeFile(t, path, `tls: {cert_file: server.crt, key_file: server.key, client_ca_file: ca.crt}
routes:
  - name: db
    protocol: postgres
    listen: 127.0.0.1:15432
    upstream: 127.0.0.1:1
    ip_rules_file: db.yaml
  - name: cache
    protocol: redis
    listen: 127.0.0.1:16379
    upstream: 127.0.0.1:1
    ip_rules_file: cache.yaml
`)
	return path
}

func buildAt(t *testing.T, path string, generation uint64) *Snapshot {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := Build(cfg, generation)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// TestFingerprint: the fingerprint and the rules digests name content:
// equal for the same files under other paths and another generation,
// blind to descriptions, and changed by a rule or a setting.
func TestFingerprint(t *testing.T) {
	pki := testenv.NewPKI(t)
	const rule = "rules:\n  - id: 00000000-0000-4000-8000-000000000001\n    cidr: 10.0.0.0/8\n    description: %s\n"
	a := buildAt(t, fingerprintDir(t, pki, fmt.Sprintf(rule, "office"), "rules: []\n"), 1)
	b := buildAt(t, fingerprintDir(t, pki, fmt.Sprintf(rule, "the office, renamed"), "rules: []\n"), 7)
	if a.Fingerprint == "" || len(a.Fingerprint) != digestLen {
		t.Fatalf("fingerprint %q", a.Fingerprint)
	}
	if a.Fingerprint != b.Fingerprint {
		t.Errorf("same content under other paths, generation and descriptions: fingerprints %s and %s", a.Fingerprint, b.Fingerprint)
	}
	if a.Route("db").RulesDigest != b.Route("db").RulesDigest {
		t.Errorf("same rules: digests %s and %s", a.Route("db").RulesDigest, b.Route("db").RulesDigest)
	}
	if a.Route("db").RulesDigest == a.Route("cache").RulesDigest {
		t.Errorf("a rule and no rules have the same digest %s", a.Route("db").RulesDigest)
	}
	stale := buildAt(t, fingerprintDir(t, pki, "rules: []\n", "rules: []\n"), 1)
	if stale.Fingerprint == a.Fingerprint {
		t.Errorf("a rule less: same fingerprint %s", a.Fingerprint)
	}
	if stale.Route("db").RulesDigest == a.Route("db").RulesDigest || stale.Route("cache").RulesDigest != a.Route("cache").RulesDigest {
		t.Errorf("digests: db %s→%s, cache %s→%s; want only db's changed", a.Route("db").RulesDigest,
			stale.Route("db").RulesDigest, a.Route("cache").RulesDigest, stale.Route("cache").RulesDigest)
	}
	path := fingerprintDir(t, pki, fmt.Sprintf(rule, "office"), "rules: []\n")
	cfgText, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, strings.Replace(string(cfgText), "ip_rules_file: db.yaml", "ip_rules_file: db.yaml\n    max_connections: 5", 1))
	if s := buildAt(t, path, 1); s.Fingerprint == a.Fingerprint {
		t.Errorf("a route setting changed: same fingerprint %s", a.Fingerprint)
	}
	// Replicas on VMs listen each on its own address: only the port counts.
	writeFile(t, path, strings.Replace(string(cfgText), "listen: 127.0.0.1:15432", "listen: 127.0.0.2:15432", 1))
	if s := buildAt(t, path, 1); s.Fingerprint != a.Fingerprint {
		t.Errorf("another listen host, same port: fingerprint %s, want %s", s.Fingerprint, a.Fingerprint)
	}
	writeFile(t, path, strings.Replace(string(cfgText), "listen: 127.0.0.1:15432", "listen: 127.0.0.1:15433", 1))
	if s := buildAt(t, path, 1); s.Fingerprint == a.Fingerprint {
		t.Errorf("another listen port: same fingerprint %s", a.Fingerprint)
	}
	other := testenv.NewPKI(t)
	if s := buildAt(t, fingerprintDir(t, other, fmt.Sprintf(rule, "office"), "rules: []\n"), 1); s.Fingerprint == a.Fingerprint {
		t.Errorf("another server certificate and CA: same fingerprint %s", a.Fingerprint)
	}
}

// metricLine matches one sample of the text exposition format.
var metricLine = regexp.MustCompile(`(?m)^([a-z_]+)(\{[^}]*\})? (\S+)$`)

// scrape returns the samples of /metrics, "name{labels}" to value.
func scrape(t *testing.T, base string) map[string]string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range metricLine.FindAllStringSubmatch(string(body), -1) {
		out[m[1]+m[2]] = m[3]
	}
	return out
}

// TestMetricsAtStart: before any traffic, /metrics holds the reload
// counters at 0, the last reload as successful, the fingerprint, a rules
// digest per route, and the cut, cancel and refusal series; a failed
// reload sets the gauge to 0 and the error counter to 1, a good one puts
// the gauge back and replaces the digest's series.
func TestMetricsAtStart(t *testing.T) {
	srv, base, _ := adminGate(t, "")
	snap := srv.Snapshot()
	got := scrape(t, base)
	want := map[string]string{
		`spacegate_reloads_total{result="error"}`:                                              "0",
		`spacegate_reloads_total{result="ok"}`:                                                 "0",
		`spacegate_config_last_reload_successful`:                                              "1",
		`spacegate_config_info{fingerprint="` + snap.Fingerprint + `"}`:                        "1",
		`spacegate_route_rules_info{digest="` + snap.Route("db").RulesDigest + `",route="db"}`: "1",
		`spacegate_connections_cut_total{reason="ip_not_allowed",route="db"}`:                  "0",
		`spacegate_connections_cut_total{reason="cert_revoked",route="db"}`:                    "0",
		`spacegate_cancel_requests_total{result="forwarded",route="db"}`:                       "0",
		`spacegate_cancel_requests_total{result="refused",route="db"}`:                         "0",
		`spacegate_connections_refused_total{reason="ip_not_allowed",route="db"}`:              "0",
		`spacegate_connections_refused_total{reason="upstream_unavailable",route="db"}`:        "0",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("at start: %s = %q, want %s", k, got[k], v)
		}
	}

	path := snap.Config.Path
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "routes: [oops\n")
	if err := srv.Reload(); err == nil {
		t.Fatal("a broken config reloaded")
	}
	got = scrape(t, base)
	if got[`spacegate_config_last_reload_successful`] != "0" || got[`spacegate_reloads_total{result="error"}`] != "1" {
		t.Errorf("after a failed reload: successful %q, errors %q; want 0 and 1",
			got[`spacegate_config_last_reload_successful`], got[`spacegate_reloads_total{result="error"}`])
	}
	writeFile(t, filepath.Join(filepath.Dir(path), "rules.yaml"),
		"rules:\n  - id: 00000000-0000-4000-8000-000000000001\n    cidr: 10.0.0.0/8\n    description: office\n")
	writeFile(t, path, string(good))
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	next := srv.Snapshot()
	got = scrape(t, base)
	if got[`spacegate_config_last_reload_successful`] != "1" {
		t.Errorf("after a good reload: successful %q, want 1", got[`spacegate_config_last_reload_successful`])
	}
	if next.Route("db").RulesDigest == snap.Route("db").RulesDigest {
		t.Fatalf("a new rule, same digest %s", snap.Route("db").RulesDigest)
	}
	for k := range got {
		if strings.HasPrefix(k, "spacegate_route_rules_info") && !strings.Contains(k, next.Route("db").RulesDigest) {
			t.Errorf("old digest's series kept after the reload: %s", k)
		}
		if strings.HasPrefix(k, "spacegate_config_info") && !strings.Contains(k, next.Fingerprint) {
			t.Errorf("old fingerprint's series kept after the reload: %s", k)
		}
	}
}

// TestStatusContent: /v1/status names the replica, the fingerprint, and
// per route the rules digest, the server certificate's serial, the CA
// fingerprints and the CRL (none here).
func TestStatusContent(t *testing.T) {
	srv, base, _ := adminGate(t, "")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(base + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st admin.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	snap := srv.Snapshot()
	if st.Name != host || st.Fingerprint != snap.Fingerprint {
		t.Errorf("name %q fingerprint %q, want %q and %q", st.Name, st.Fingerprint, host, snap.Fingerprint)
	}
	if len(st.Routes) != 1 {
		t.Fatalf("routes: %+v", st.Routes)
	}
	r := st.Routes[0]
	if r.RulesDigest != snap.Route("db").RulesDigest || r.ServerCertSerial == "" || len(r.CAFingerprints) != 1 || len(r.CAFingerprints[0]) != 64 || r.CRLs == nil {
		t.Errorf("route: digest %q serial %q CAs %q CRLs %v", r.RulesDigest, r.ServerCertSerial, r.CAFingerprints, r.CRLs)
	}
}
