package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/spacegate/spacegate/allowlist"
	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/testenv"
)

// The files of deploy/ that name the gate's metrics.
const (
	dashboardFile = "../../deploy/grafana/spacegate.json"
	alertsFile    = "../../deploy/prometheus/alerts.yaml"
)

// metricRef matches the metric names a PromQL expression may use from the
// gate: its own and those of the Go and process collectors it registers.
var metricRef = regexp.MustCompile(`\b(?:spacegate|process|go)_[a-z0-9_]+\b`)

// TestDeployMetricsExist runs a gate through one good connection, a
// cancel, one refusal, and a reload that cuts a live connection, then
// checks that every metric the Grafana dashboard and the Prometheus
// alerts use is in its /metrics: a renamed metric fails here, not in
// front of an operator with an empty panel.
func TestDeployMetricsExist(t *testing.T) {
	used := map[string][]string{} // metric -> where
	for _, e := range dashboardExprs(t) {
		for _, m := range metricRef.FindAllString(e, -1) {
			used[m] = append(used[m], "dashboard")
		}
	}
	for _, e := range alertExprs(t) {
		for _, m := range metricRef.FindAllString(e, -1) {
			used[m] = append(used[m], "alerts")
		}
	}
	if len(used) < 10 {
		t.Fatalf("found only %d metric names in the dashboard and alerts: %v", len(used), used)
	}

	g := startGateBinary(t)
	dir, config, gate, p := g.dir, g.config, g.addrs, g.proc

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	good, err := pgx.Connect(ctx, gateConnString(dir, gate.pg))
	if err != nil {
		t.Fatalf("connecting through the gate: %v", err)
	}
	// A cancel request, as Ctrl-C in psql sends one.
	sleeping := make(chan error, 1)
	go func() {
		_, err := good.Exec(ctx, "select pg_sleep(10)")
		sleeping <- err
	}()
	// Cancelled before it runs, the query would not see the cancel.
	testenv.WaitFor(t, 10*time.Second, "pg_sleep to run upstream", func() bool {
		return runningQueries(t, gateConnString(dir, gate.pg), "select pg_sleep(10)") == 1
	})
	if err := good.PgConn().CancelRequest(ctx); err != nil {
		t.Errorf("cancel request through the gate: %v", err)
	}
	if err := <-sleeping; err == nil || !strings.Contains(err.Error(), "57014") {
		t.Errorf("pg_sleep after a cancel request returned %v, want SQLSTATE 57014", err)
	}
	good.Close(ctx)

	// A refusal: TLS without a client certificate.
	_, port, _ := net.SplitHostPort(gate.pg)
	noCert := fmt.Sprintf("host=localhost port=%s user=postgres dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=10",
		port, filepath.Join(dir, "client", "root.crt"))
	if c, err := pgx.Connect(ctx, noCert); err == nil {
		c.Close(ctx)
		t.Fatal("a connection without a client certificate was let through")
	}

	// A reload that cuts: the route is switched off under a live session.
	live, err := pgx.Connect(ctx, gateConnString(dir, gate.pg))
	if err != nil {
		t.Fatalf("connecting through the gate: %v", err)
	}
	defer live.Close(context.Background())
	route := "ip_rules_file: rules/" + qsPostgresRoute + ".yaml"
	copyConfig(t, config, config, route, route+"\n    enabled: false")

	var fams map[string]*dto.MetricFamily
	deadline := time.Now().Add(15 * time.Second)
	for {
		fams = scrapeMetrics(t, gate.admin)
		if fams["spacegate_connections_cut_total"] != nil && fams["spacegate_connection_duration_seconds"] != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cut connection in /metrics 15s after disabling the route; log:\n%s", p.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}

	exported := map[string]bool{}
	for name, f := range fams {
		exported[name] = true
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			exported[name+"_bucket"], exported[name+"_sum"], exported[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			exported[name+"_sum"], exported[name+"_count"] = true, true
		}
	}
	names := make([]string, 0, len(used))
	for name := range used {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if !exported[name] {
			t.Errorf("%s uses %s, which the gate does not export", strings.Join(slices.Compact(used[name]), " and "), name)
		}
	}
}

// dashboardExprs returns every PromQL expression of the Grafana dashboard:
// panel targets, annotations and template variable queries.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "definition") {
					exprs = append(exprs, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	return exprs
}

// alertExprs returns the expr of every rule in the alerts file.
func alertExprs(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct {
				Expr string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	var exprs []string
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	return exprs
}

// TestDashboardQueriesParse has promtool parse every query of the Grafana
// dashboard, with Grafana's variables given values, as recording rules.
func TestDashboardQueriesParse(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if testenv.Strict() {
			t.Fatalf("promtool (Debian package prometheus) is missing; failing because %s=1", testenv.StrictEnv)
		}
		t.Skipf("promtool (Debian package prometheus) is missing; set %s=1 to fail instead of skip", testenv.StrictEnv)
	}
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$job", ".*", "$instance", ".*", "$route", ".*")
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for i, e := range dashboardExprs(t) {
		if strings.HasPrefix(e, "label_values(") {
			// Grafana's own function: check the selector inside it.
			e = strings.TrimSuffix(strings.TrimPrefix(e, "label_values("), ")")
			if i := strings.LastIndex(e, ","); i > strings.LastIndex(e, "}") {
				e = e[:i]
			}
		}
		rules = append(rules, rule{Record: "dashboard:query_" + strconv.Itoa(i), Expr: vars.Replace(e)})
	}
	doc := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}
	data, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput()
	if err != nil {
		t.Errorf("promtool check rules on the dashboard's queries: %v\n%s\n%s", err, out, data)
	}
}

// helmChart is the chart's directory, from this package's.
const helmChart = "../../deploy/helm/spacegate"

// helmBinary returns the helm command: $HELM, helm on $PATH or
// ~/go/bin/helm. Without one it skips t (fails it when strict).
func helmBinary(t *testing.T) string {
	t.Helper()
	helm := os.Getenv("HELM")
	if helm == "" {
		var err error
		if helm, err = exec.LookPath("helm"); err != nil {
			home, _ := os.UserHomeDir()
			helm = filepath.Join(home, "go", "bin", "helm")
		}
	}
	if _, err := os.Stat(helm); err != nil {
		const msg = "helm is missing (go install helm.sh/helm/v3/cmd/helm@v3.22.0, or set $HELM)"
		if testenv.Strict() {
			t.Fatalf("%s; failing because %s=1", msg, testenv.StrictEnv)
		}
		t.Skipf("%s; set %s=1 to fail instead of skip", msg, testenv.StrictEnv)
	}
	return helm
}

// helmConfigMaps renders the chart with the given extra arguments (-f
// VALUES, --set ...) and returns the data of each ConfigMap.
func helmConfigMaps(t *testing.T, helm string, extra ...string) []map[string]string {
	t.Helper()
	args := append([]string{"template", "gate", helmChart, "--kube-version", "1.31.0"}, extra...)
	out, err := exec.Command(helm, args...).Output()
	if err != nil {
		t.Fatalf("helm %s: %v", strings.Join(args, " "), err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(out)))
	var cms []map[string]string
	for {
		var doc struct {
			Kind string            `yaml:"kind"`
			Data map[string]string `yaml:"data"`
		}
		if err := dec.Decode(&doc); err != nil {
			break
		}
		if doc.Kind == "ConfigMap" {
			cms = append(cms, doc.Data)
		}
	}
	return cms
}

// TestHelmChartConfig renders the Helm chart and has the gate's own
// parsers read the config file and rules files its ConfigMaps hold, so
// that the chart cannot write a key the gate refuses. (deploy/k8stest
// checks the Kubernetes side.)
func TestHelmChartConfig(t *testing.T) {
	helm := helmBinary(t)
	for _, values := range []string{"", "ci/full-values.yaml", "ci/minimal-values.yaml"} {
		t.Run("values="+values, func(t *testing.T) {
			var args []string
			if values != "" {
				args = []string{"-f", filepath.Join(helmChart, values)}
			}
			var configs, rules int
			for _, cm := range helmConfigMaps(t, helm, args...) {
				for name, data := range cm {
					switch {
					case name == "spacegate.yaml":
						configs++
						if _, err := config.Parse([]byte(data), "/etc/spacegate/config/spacegate.yaml"); err != nil {
							t.Errorf("the gate refuses the chart's config: %v\n%s", err, data)
						}
					case strings.HasSuffix(name, ".yaml"):
						rules++
						if _, err := allowlist.Parse([]byte(data)); err != nil {
							t.Errorf("the gate refuses the chart's rules file %s: %v\n%s", name, err, data)
						}
					}
				}
			}
			if configs != 1 || rules == 0 {
				t.Errorf("found %d config files and %d rules files in the chart's ConfigMaps, want 1 and some", configs, rules)
			}
		})
	}
}

// TestHelmChartReadyRequiresUpstream: the value admin.readyRequiresUpstream
// becomes the gate's admin.ready_requires_upstream, read by the gate's own
// parser; by default the chart writes no such key, so /readyz does not look
// at the upstreams.
func TestHelmChartReadyRequiresUpstream(t *testing.T) {
	helm := helmBinary(t)
	for _, tc := range []struct {
		name    string
		args    []string
		want    bool
		written bool // the key is in the rendered file
	}{
		{"default", nil, false, false},
		{"set true", []string{"--set", "admin.readyRequiresUpstream=true"}, true, true},
		{"set false", []string{"--set", "admin.readyRequiresUpstream=false"}, false, false},
		{"full-values", []string{"-f", filepath.Join(helmChart, "ci/full-values.yaml")}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var data string
			for _, cm := range helmConfigMaps(t, helm, tc.args...) {
				if d, ok := cm["spacegate.yaml"]; ok {
					data = d
				}
			}
			if data == "" {
				t.Fatal("no spacegate.yaml in the chart's ConfigMaps")
			}
			cfg, err := config.Parse([]byte(data), "/etc/spacegate/config/spacegate.yaml")
			if err != nil {
				t.Fatalf("the gate refuses the chart's config: %v\n%s", err, data)
			}
			if cfg.Admin.ReadyRequiresUpstream != tc.want {
				t.Errorf("admin.ready_requires_upstream = %v, want %v\n%s", cfg.Admin.ReadyRequiresUpstream, tc.want, data)
			}
			if got := strings.Contains(data, "ready_requires_upstream"); got != tc.written {
				t.Errorf("ready_requires_upstream in the rendered config: %v, want %v\n%s", got, tc.written, data)
			}
		})
	}
	// The schema takes a boolean only.
	args := []string{"template", "gate", helmChart, "--kube-version", "1.31.0", "--set-string", "admin.readyRequiresUpstream=yes"}
	if out, err := exec.Command(helm, args...).CombinedOutput(); err == nil {
		t.Errorf("helm %s rendered a string for a boolean value:\n%.400s", strings.Join(args, " "), out)
	}
}

// TestDashboardFleetPanel: the dashboard shows the fingerprint of each
// replica and the rules digest per route and replica, so that drift is
// seen at a glance.
func TestDashboardFleetPanel(t *testing.T) {
	var fingerprints, digests bool
	for _, e := range dashboardExprs(t) {
		fingerprints = fingerprints || strings.Contains(e, "by (instance, fingerprint) (spacegate_config_info")
		digests = digests || strings.Contains(e, "by (route, instance, digest) (spacegate_route_rules_info")
	}
	if !fingerprints || !digests {
		t.Errorf("dashboard: fingerprint per replica %v, rules digest per replica %v; want both", fingerprints, digests)
	}
}
