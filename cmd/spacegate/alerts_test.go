package main

import (
	"bytes"
	"github.com/spacegate/spacegate/admin"
	"os"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// alertRules is the shape of a Prometheus rule file, strict enough that a
// misspelt key is caught without promtool.
type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// TestAlertRules checks deploy/prometheus/alerts.yaml: well formed, every
// alert with a severity, summary and description, and every spacegate
// metric it uses one that the gate registers (in admin/metrics.go).
func TestAlertRules(t *testing.T) {
	data, err := os.ReadFile("../../deploy/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var rules alertRules
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	exported := map[string]bool{}
	for _, n := range admin.NewMetrics().Names() {
		exported[n] = true
	}
	metricName := regexp.MustCompile(`\bspacegate_[a-z_]+`)
	seen := map[string]bool{}
	used := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			switch {
			case r.Alert == "" || r.Expr == "":
				t.Errorf("group %s: rule %q without alert name or expr", g.Name, r.Alert)
			case seen[r.Alert]:
				t.Errorf("alert %s defined twice", r.Alert)
			}
			seen[r.Alert] = true
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %s has severity %q, want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s lacks a summary or description", r.Alert)
			}
			if strings.Count(r.Expr, "(") != strings.Count(r.Expr, ")") {
				t.Errorf("alert %s: unbalanced parentheses in %q", r.Alert, r.Expr)
			}
			for _, m := range metricName.FindAllString(r.Expr, -1) {
				used[m] = true
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
				if !exported[m] && !exported[base] {
					t.Errorf("alert %s uses %s, which the gate does not export", r.Alert, m)
				}
			}
		}
	}
	for _, m := range []string{"spacegate_cert_expiry_timestamp_seconds", "spacegate_client_cert_expiry_timestamp_seconds",
		"spacegate_config_last_reload_successful", "spacegate_route_rules_info", "spacegate_config_info", "spacegate_crl_next_update_timestamp_seconds"} {
		if !used[m] {
			t.Errorf("no alert uses %s", m)
		}
	}
	if !seen["SpacegateDown"] {
		t.Errorf("no alert for a gate that is down")
	}
	// Every alert has a promtool unit test (.ci/run runs them).
	tests, err := os.ReadFile("../../deploy/prometheus/alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tested := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s*alertname: (\S+)`).FindAllStringSubmatch(string(tests), -1) {
		tested[m[1]] = true
	}
	for a := range seen {
		if !tested[a] {
			t.Errorf("alert %s has no test in deploy/prometheus/alerts_test.yaml", a)
		}
	}
}
