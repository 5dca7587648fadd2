package k8stest

import (
	"bytes"
	"os"
	"reflect"
	"testing"

	"sigs.k8s.io/yaml"
)

// alertsFile is the one source of the alerts; the chart holds a copy.
const (
	alertsFile      = "../prometheus/alerts.yaml"
	chartAlertsFile = chartDir + "/files/alerts.yaml"
)

// TestChartAlertsCopy: the chart's copy of the alerts is the file
// Prometheus users load, byte for byte.
func TestChartAlertsCopy(t *testing.T) {
	want, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(chartAlertsFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from %s: the PrometheusRule would not hold the same alerts; run `go generate` in deploy/k8stest", chartAlertsFile, alertsFile)
	}
}

// TestChartPrometheusRule: prometheusRule.enabled renders the groups and
// rules of deploy/prometheus/alerts.yaml, all of them and nothing else.
func TestChartPrometheusRule(t *testing.T) {
	data, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var want ruleFile
	if err := yaml.UnmarshalStrict(data, &want); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	if len(want.Groups) == 0 {
		t.Fatalf("%s has no rule groups", alertsFile)
	}

	out, err := helmTemplate(t, nil, "prometheusRule.enabled=true", "prometheusRule.labels.release=kps")
	if err != nil {
		t.Fatal(err)
	}
	r := decode(t, out)
	pr := r.prometheusRule
	if pr == nil {
		t.Fatal("prometheusRule.enabled but no PrometheusRule")
	}
	if pr.Labels["release"] != "kps" || pr.Labels["app.kubernetes.io/name"] != "spacegate" {
		t.Errorf("PrometheusRule labels %v, want the chart's and prometheusRule.labels", pr.Labels)
	}
	if !reflect.DeepEqual(pr.Spec, want) {
		got, _ := yaml.Marshal(pr.Spec)
		t.Errorf("the PrometheusRule's groups differ from %s:\n%s", alertsFile, got)
	}
}
