// Package k8stest checks the Helm chart in deploy/helm/spacegate: it renders
// it with helm template and decodes every manifest strictly into its
// Kubernetes API type, so that a misspelt field fails here rather than in a
// cluster, then checks what the chart promises (replicas across zones, a
// drain that finishes before the kubelet kills, hot-reloadable mounts, a
// NetworkPolicy that reaches only the upstreams).
//
// It is a module of its own so that the gate does not depend on k8s.io.
// Run it with: cd deploy/k8stest && go test ./...
package k8stest
