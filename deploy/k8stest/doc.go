// Package k8stest checks the Helm chart in deploy/helm/spacegate: it renders
// it with helm template and decodes every manifest strictly into its
// Kubernetes API type, so that a misspelt field fails here rather than in a
// cluster, then checks what the chart promises (replicas across zones, a
// drain that finishes before the kubelet kills, hot-reloadable mounts, a
// NetworkPolicy that reaches only the upstreams, a headless Service naming
// every replica's admin endpoint, a PrometheusRule with the alerts of
// deploy/prometheus/alerts.yaml).
//
// The chart's files/alerts.yaml is a copy of deploy/prometheus/alerts.yaml,
// since Helm reads no file outside the chart; TestChartAlertsCopy fails
// when they differ, and go generate copies it again.
//
// cluster.sh starts a real control plane (kube-apiserver, controller-manager,
// scheduler, etcd, kwok's fake nodes in three zones) and chart.sh installs,
// checks, upgrades and uninstalls the chart on it; .ci/run runs both.
//
// It is a module of its own so that the gate does not depend on k8s.io.
// Run it with: cd deploy/k8stest && go test ./...
package k8stest

//go:generate cp ../prometheus/alerts.yaml ../helm/spacegate/files/alerts.yaml
