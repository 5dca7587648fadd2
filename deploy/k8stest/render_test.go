package k8stest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// chartDir is the chart under test, relative to this package.
const chartDir = "../helm/spacegate"

// kubeVersion is the cluster version helm renders for; the chart needs
// 1.30 or later (lifecycle.preStop.sleep).
const kubeVersion = "1.31.0"

// serviceMonitor is the part of the Prometheus Operator's
// monitoring.coreos.com/v1 ServiceMonitor that the chart writes. It is a
// CRD, so there is no k8s.io type; a field the chart adds must be added
// here, after checking it in the CRD, or the strict decode fails.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
			// Authorization is the CRD's SafeAuthorization.
			Authorization *struct {
				Type        string                    `json:"type"`
				Credentials *corev1.SecretKeySelector `json:"credentials"`
			} `json:"authorization"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// certificate is the part of cert-manager's cert-manager.io/v1
// Certificate that the chart writes (a CRD too).
type certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SecretName  string   `json:"secretName"`
		DNSNames    []string `json:"dnsNames"`
		Duration    string   `json:"duration"`
		RenewBefore string   `json:"renewBefore"`
		PrivateKey  struct {
			Algorithm      string `json:"algorithm"`
			Size           int    `json:"size"`
			RotationPolicy string `json:"rotationPolicy"`
		} `json:"privateKey"`
		Usages    []string `json:"usages"`
		IssuerRef struct {
			Name  string `json:"name"`
			Kind  string `json:"kind"`
			Group string `json:"group"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

// prometheusRule is the Prometheus Operator's monitoring.coreos.com/v1
// PrometheusRule, as far as the chart writes it (a CRD too).
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ruleFile `json:"spec"`
}

// ruleFile is a Prometheus rule file, and a PrometheusRule's spec.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert         string            `json:"alert,omitempty"`
			Record        string            `json:"record,omitempty"`
			Expr          string            `json:"expr"`
			For           string            `json:"for,omitempty"`
			KeepFiringFor string            `json:"keep_firing_for,omitempty"`
			Labels        map[string]string `json:"labels"`
			Annotations   map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

// gateConfig is the part of the gate's config file the checks read. The
// gate's own parser checks the whole file, in cmd/spacegate's tests.
type gateConfig struct {
	Admin struct {
		Listen                string `json:"listen"`
		TokenFile             string `json:"token_file"`
		ReadyRequiresUpstream *bool  `json:"ready_requires_upstream"`
	} `json:"admin"`
	TLS           map[string]string `json:"tls"`
	ProxyProtocol struct {
		TrustedCIDRs []string `json:"trusted_cidrs"`
	} `json:"proxy_protocol"`
	Limits struct {
		DrainTimeout  string `json:"drain_timeout"`
		ShutdownDelay string `json:"shutdown_delay"`
	} `json:"limits"`
	Routes []map[string]any `json:"routes"`
}

// rendered holds the manifests of one helm template run, by kind.
type rendered struct {
	deployment     *appsv1.Deployment
	services       map[string]*corev1.Service
	configMaps     map[string]*corev1.ConfigMap
	secrets        map[string]*corev1.Secret
	pdb            *policyv1.PodDisruptionBudget
	netpol         *networkingv1.NetworkPolicy
	serviceAccount *corev1.ServiceAccount
	serviceMonitor *serviceMonitor
	prometheusRule *prometheusRule
	certificate    *certificate
}

// helmBinary returns the helm command, or skips t (fails it when
// SPACEGATE_REQUIRE_INTEGRATION=1) when there is none.
func helmBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("HELM"); p != "" {
		return p
	}
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	home, _ := os.UserHomeDir()
	if p := filepath.Join(home, "go", "bin", "helm"); fileExists(p) {
		return p
	}
	const msg = "helm is missing (go install helm.sh/helm/v3/cmd/helm@v3.22.0, or set $HELM)"
	if os.Getenv("SPACEGATE_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("%s; failing because SPACEGATE_REQUIRE_INTEGRATION=1", msg)
	}
	t.Skipf("%s; set SPACEGATE_REQUIRE_INTEGRATION=1 to fail instead of skip", msg)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// helmTemplate renders the chart with the given values files and --set
// flags and returns helm's output and error.
func helmTemplate(t *testing.T, valuesFiles []string, sets ...string) (string, error) {
	t.Helper()
	args := []string{"template", "gate", chartDir, "--namespace", "edge", "--kube-version", kubeVersion}
	for _, f := range valuesFiles {
		args = append(args, "-f", filepath.Join(chartDir, f))
	}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(helmBinary(t), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decode splits helm's output into documents and decodes each strictly
// into the type of its apiVersion and kind.
func decode(t *testing.T, out string) *rendered {
	t.Helper()
	r := &rendered{
		services:   map[string]*corev1.Service{},
		configMaps: map[string]*corev1.ConfigMap{},
		secrets:    map[string]*corev1.Secret{},
	}
	for i, doc := range docSeparator.Split(out, -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("document %d is not YAML: %v\n%s", i, err, doc)
		}
		var obj any
		store := func() {} // files obj once it is decoded and has its name
		gvk := tm.APIVersion + ", Kind=" + tm.Kind
		switch gvk {
		case "apps/v1, Kind=Deployment":
			if r.deployment != nil {
				t.Fatalf("two Deployments")
			}
			r.deployment = new(appsv1.Deployment)
			obj = r.deployment
		case "v1, Kind=Service":
			s := new(corev1.Service)
			obj = s
			store = func() { r.services[s.Name] = s }
		case "v1, Kind=ConfigMap":
			c := new(corev1.ConfigMap)
			obj = c
			store = func() { r.configMaps[c.Name] = c }
		case "v1, Kind=Secret":
			s := new(corev1.Secret)
			obj = s
			store = func() { r.secrets[s.Name] = s }
		case "v1, Kind=ServiceAccount":
			r.serviceAccount = new(corev1.ServiceAccount)
			obj = r.serviceAccount
		case "policy/v1, Kind=PodDisruptionBudget":
			r.pdb = new(policyv1.PodDisruptionBudget)
			obj = r.pdb
		case "networking.k8s.io/v1, Kind=NetworkPolicy":
			r.netpol = new(networkingv1.NetworkPolicy)
			obj = r.netpol
		case "monitoring.coreos.com/v1, Kind=ServiceMonitor":
			r.serviceMonitor = new(serviceMonitor)
			obj = r.serviceMonitor
		case "monitoring.coreos.com/v1, Kind=PrometheusRule":
			r.prometheusRule = new(prometheusRule)
			obj = r.prometheusRule
		case "cert-manager.io/v1, Kind=Certificate":
			r.certificate = new(certificate)
			obj = r.certificate
		default:
			t.Fatalf("document %d: %s has no decoder here; add one:\n%s", i, gvk, doc)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("document %d (%s) does not decode strictly: %v\n%s", i, gvk, err, doc)
		}
		store()
	}
	return r
}

func stripComments(doc string) string {
	var b strings.Builder
	for line := range strings.Lines(doc) {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}

func TestChartRenders(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		check  func(t *testing.T, r *rendered)
	}{
		{"default", nil, func(t *testing.T, r *rendered) {
			if n := *r.deployment.Spec.Replicas; n != 3 {
				t.Errorf("replicas = %d, want 3", n)
			}
			if r.pdb == nil || r.pdb.Spec.MaxUnavailable == nil || r.pdb.Spec.MaxUnavailable.IntValue() != 1 {
				t.Errorf("PodDisruptionBudget = %+v, want maxUnavailable 1", r.pdb)
			}
			if r.netpol == nil {
				t.Errorf("no NetworkPolicy by default")
			}
			if r.serviceMonitor != nil || r.certificate != nil || r.prometheusRule != nil {
				t.Errorf("ServiceMonitor, PrometheusRule or Certificate rendered by default; they need CRDs")
			}
			// /readyz does not look at the upstreams unless asked:
			// admin.readyRequiresUpstream writes no key by default.
			if v := r.config(t).Admin.ReadyRequiresUpstream; v != nil {
				t.Errorf("admin.ready_requires_upstream = %v by default, want it left out (false)", *v)
			}
		}},
		{"full", []string{"ci/full-values.yaml"}, func(t *testing.T, r *rendered) {
			if r.serviceMonitor == nil {
				t.Fatal("serviceMonitor.enabled but no ServiceMonitor")
			}
			if r.prometheusRule == nil {
				t.Fatal("prometheusRule.enabled but no PrometheusRule")
			}
			sc := r.deployment.Spec.Template.Spec.SecurityContext
			if !slices.ContainsFunc(sc.Sysctls, func(s corev1.Sysctl) bool {
				return s.Name == "net.ipv4.ip_unprivileged_port_start" && s.Value == "0"
			}) {
				t.Errorf("a route on port 443 but no net.ipv4.ip_unprivileged_port_start sysctl: %+v", sc.Sysctls)
			}
			if len(r.secrets) != 3 {
				t.Errorf("secrets = %d, want the TLS and the space CA Secret from the PEM values, and the admin token", len(r.secrets))
			}
			if v := r.config(t).Admin.ReadyRequiresUpstream; v == nil || !*v {
				t.Errorf("admin.readyRequiresUpstream: true, but the config has admin.ready_requires_upstream %v, want true", v)
			}
		}},
		{"cert-manager", []string{"ci/certmanager-values.yaml"}, func(t *testing.T, r *rendered) {
			if r.certificate == nil {
				t.Fatal("tls.certManager.enabled but no Certificate")
			}
			if c := r.certificate.Spec; c.PrivateKey.RotationPolicy != "Always" || !slices.Contains(c.Usages, "server auth") {
				t.Errorf("Certificate spec = %+v, want a new key each renewal, for server auth", c)
			}
		}},
		{"minimal", []string{"ci/minimal-values.yaml"}, func(t *testing.T, r *rendered) {
			if r.pdb != nil || r.netpol != nil {
				t.Errorf("PodDisruptionBudget or NetworkPolicy rendered though disabled")
			}
			if r.deployment.Spec.Template.Spec.Containers[0].Lifecycle != nil {
				t.Errorf("preStop with drain.preStopSleepSeconds 0")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := helmTemplate(t, tt.values)
			if err != nil {
				t.Fatal(err)
			}
			r := decode(t, out)
			if r.deployment == nil {
				t.Fatal("no Deployment")
			}
			checkPod(t, r)
			checkConfig(t, r)
			checkServices(t, r)
			checkNetworkPolicy(t, r)
			checkServiceMonitor(t, r)
			checkCertificate(t, r)
			tt.check(t, r)
		})
	}
}

// podLabels returns the labels of the Deployment's pods.
func (r *rendered) podLabels() labels.Set { return r.deployment.Spec.Template.Labels }

// selects reports whether sel selects the Deployment's pods.
func (r *rendered) selects(sel *metav1.LabelSelector) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && !s.Empty() && s.Matches(r.podLabels())
}

// config returns the gate's config file from the ConfigMap the pods mount.
func (r *rendered) config(t *testing.T) gateConfig {
	t.Helper()
	cm := r.configMaps[r.volume(t, "config").ConfigMap.Name]
	if cm == nil {
		t.Fatalf("the config volume names ConfigMap %q, which the chart does not render", r.volume(t, "config").ConfigMap.Name)
	}
	var c gateConfig
	if err := yaml.Unmarshal([]byte(cm.Data["spacegate.yaml"]), &c); err != nil {
		t.Fatalf("spacegate.yaml: %v\n%s", err, cm.Data["spacegate.yaml"])
	}
	return c
}

func (r *rendered) volume(t *testing.T, name string) corev1.Volume {
	t.Helper()
	for _, v := range r.deployment.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("the pod has no volume %q", name)
	return corev1.Volume{}
}

func duration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("duration %q: %v", s, err)
	}
	return d
}

// checkPod: non-root and locked down, ready only while serving, a drain
// that ends before the kubelet's SIGKILL, mounts that update in place.
func checkPod(t *testing.T, r *rendered) {
	d := r.deployment
	spec := d.Spec.Template.Spec
	if !r.selects(d.Spec.Selector) {
		t.Errorf("the Deployment's selector %v does not select its pods %v", d.Spec.Selector, r.podLabels())
	}
	if u := d.Spec.Strategy.RollingUpdate; u == nil || u.MaxUnavailable == nil || u.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rolling update %+v, want maxUnavailable 0: a new gate is ready before an old one drains", u)
	}
	zones := slices.ContainsFunc(spec.TopologySpreadConstraints, func(c corev1.TopologySpreadConstraint) bool {
		return c.TopologyKey == "topology.kubernetes.io/zone" && r.selects(c.LabelSelector)
	})
	if !zones {
		t.Errorf("no topology spread across zones that selects the gate's pods")
	}
	sc := spec.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.FSGroup == nil {
		t.Errorf("pod securityContext %+v, want runAsNonRoot and an fsGroup (to read the 0400 Secrets)", sc)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("the pod mounts a service account token; the gate never uses the API")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	csc := c.SecurityContext
	if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem ||
		csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
		csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") || len(csc.Capabilities.Add) > 0 {
		t.Errorf("container securityContext %+v, want a read-only root, no privilege escalation, every capability dropped", csc)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("resources %+v, want CPU and memory requests", c.Resources)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.String() != "admin" {
		t.Errorf("readinessProbe %+v, want GET /readyz on the admin port (503 from SIGTERM on)", p)
	}
	// The probes hit the paths the gate serves without the admin token.
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
		if p == nil || p.HTTPGet == nil || (p.HTTPGet.Path != "/healthz" && p.HTTPGet.Path != "/readyz") {
			t.Errorf("%s probe %+v, want GET /healthz or /readyz, which need no admin token", name, p)
		}
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "admin" }) {
		t.Errorf("no container port named admin")
	}

	cfg := r.config(t)
	drain := duration(t, cfg.Limits.DrainTimeout) + duration(t, cfg.Limits.ShutdownDelay)
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
		if c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Exec != nil {
			t.Errorf("preStop %+v, want the kubelet's sleep action: the image has no shell", c.Lifecycle.PreStop)
		} else {
			drain += time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		}
	}
	grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	if grace <= drain {
		t.Errorf("terminationGracePeriodSeconds %v is not longer than preStop + shutdown_delay + drain_timeout %v: the kubelet would SIGKILL a draining gate", grace, drain)
	}

	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		if m.SubPath != "" || m.SubPathExpr != "" {
			t.Errorf("mount %s uses subPath: the kubelet never updates those, so changes would need a restart", m.Name)
		}
		if !m.ReadOnly {
			t.Errorf("mount %s is writable", m.Name)
		}
		v, ok := volumes[m.Name]
		if !ok {
			t.Errorf("mount %s has no volume", m.Name)
			continue
		}
		if v.Secret != nil && (v.Secret.DefaultMode == nil || *v.Secret.DefaultMode != 0o400) {
			t.Errorf("secret volume %s has defaultMode %v, want 0400", m.Name, v.Secret.DefaultMode)
		}
	}
}

// mountOf returns the volume mount that holds path, or false.
func (r *rendered) mountOf(path string) (corev1.VolumeMount, bool) {
	for _, m := range r.deployment.Spec.Template.Spec.Containers[0].VolumeMounts {
		if strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/") {
			return m, true
		}
	}
	return corev1.VolumeMount{}, false
}

// checkConfig: every file the config names is in a mounted volume, and the
// ones the chart creates hold it.
func checkConfig(t *testing.T, r *rendered) {
	c := r.deployment.Spec.Template.Spec.Containers[0]
	cfgPath := c.Args[slices.Index(c.Args, "--config")+1]
	if m, ok := r.mountOf(cfgPath); !ok || m.Name != "config" {
		t.Errorf("serve --config %s is not in the config volume", cfgPath)
	}
	cfg := r.config(t)
	if cfg.Admin.TokenFile == "" {
		t.Errorf("admin.listen %s without admin.token_file: the gate refuses an admin endpoint on the pod's address without a token", cfg.Admin.Listen)
	}
	files := []string{cfg.Admin.TokenFile}
	for k, v := range cfg.TLS {
		if strings.HasSuffix(k, "_file") {
			files = append(files, v)
		}
	}
	for _, route := range cfg.Routes {
		for k, v := range route {
			if s, ok := v.(string); ok && strings.HasSuffix(k, "_file") {
				files = append(files, s)
			}
		}
	}
	for _, f := range files {
		m, ok := r.mountOf(f)
		if !ok {
			t.Errorf("the config names %s, which no volume holds", f)
			continue
		}
		// Volumes the chart fills: the key must be there.
		v := r.volume(t, m.Name)
		key := strings.TrimPrefix(f, strings.TrimSuffix(m.MountPath, "/")+"/")
		if v.Secret != nil && len(v.Secret.Items) > 0 {
			i := slices.IndexFunc(v.Secret.Items, func(it corev1.KeyToPath) bool { return it.Path == key })
			if i < 0 {
				t.Errorf("the config names %s, but volume %s maps no key to %s", f, m.Name, key)
				continue
			}
			key = v.Secret.Items[i].Key
		}
		switch {
		case v.ConfigMap != nil && r.configMaps[v.ConfigMap.Name] != nil:
			if _, ok := r.configMaps[v.ConfigMap.Name].Data[key]; !ok {
				t.Errorf("the config names %s, but ConfigMap %s has no key %s", f, v.ConfigMap.Name, key)
			}
		case v.Secret != nil && r.secrets[v.Secret.SecretName] != nil:
			if _, ok := r.secrets[v.Secret.SecretName].Data[key]; !ok {
				t.Errorf("the config names %s, but Secret %s has no key %s", f, v.Secret.SecretName, key)
			}
		}
	}
	if _, port, _ := strings.Cut(cfg.Admin.Listen, ":"); port == "" {
		t.Errorf("admin.listen %q has no port", cfg.Admin.Listen)
	}
}

// checkServices: the routes behind a load balancer that keeps the client
// address, the admin endpoint inside the cluster only.
func checkServices(t *testing.T, r *rendered) {
	c := r.deployment.Spec.Template.Spec.Containers[0]
	named := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		named[p.Name] = p
	}
	var routes, admin, fleet *corev1.Service
	for _, s := range r.services {
		switch s.Labels["app.kubernetes.io/component"] {
		case "admin":
			admin = s
		case "fleet":
			fleet = s
		default:
			routes = s
		}
		if !r.selects(&metav1.LabelSelector{MatchLabels: s.Spec.Selector}) {
			t.Errorf("Service %s does not select the gate's pods", s.Name)
		}
		for _, p := range s.Spec.Ports {
			if _, ok := named[p.TargetPort.String()]; !ok {
				t.Errorf("Service %s port %s targets %q, which is no container port", s.Name, p.Name, p.TargetPort.String())
			}
		}
	}
	if routes == nil || admin == nil || fleet == nil || len(r.services) != 3 {
		t.Fatalf("want a Service for the routes, one for admin and a headless one for the fleet, got %d", len(r.services))
	}
	if admin.Spec.Type != corev1.ServiceTypeClusterIP || len(admin.Spec.Ports) != 1 || admin.Spec.Ports[0].Name != "admin" {
		t.Errorf("admin Service %+v, want ClusterIP with the admin port only", admin.Spec)
	}
	// The fleet: one DNS record per ready gate, for admin.fleet's dns: entries.
	if fleet.Spec.ClusterIP != corev1.ClusterIPNone || len(fleet.Spec.Ports) != 1 || fleet.Spec.Ports[0].Name != "admin" ||
		fleet.Spec.Ports[0].Port != admin.Spec.Ports[0].Port || fleet.Spec.PublishNotReadyAddresses {
		t.Errorf("fleet Service %+v, want headless (clusterIP None) with the admin port only, ready gates only", fleet.Spec)
	}
	if slices.ContainsFunc(routes.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "admin" }) {
		t.Errorf("the admin port is on the public Service")
	}
	if routes.Spec.Type == corev1.ServiceTypeLoadBalancer {
		local := routes.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
		proxyProtocol := len(r.config(t).ProxyProtocol.TrustedCIDRs) > 0
		if !local && !proxyProtocol {
			t.Errorf("LoadBalancer with externalTrafficPolicy %q and no PROXY protocol: the IP rules would see node addresses", routes.Spec.ExternalTrafficPolicy)
		}
	}
}

// checkNetworkPolicy: the gate reaches its upstreams (and DNS) only.
func checkNetworkPolicy(t *testing.T, r *rendered) {
	np := r.netpol
	if np == nil {
		return
	}
	if !r.selects(&np.Spec.PodSelector) {
		t.Errorf("the NetworkPolicy does not select the gate's pods")
	}
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		t.Errorf("policyTypes %v, want Ingress and Egress", np.Spec.PolicyTypes)
	}
	for i, e := range np.Spec.Egress {
		if len(e.To) == 0 || len(e.Ports) == 0 {
			t.Errorf("egress rule %d allows any destination or any port: %+v", i, e)
		}
		for _, p := range e.To {
			if p.IPBlock != nil && (strings.HasSuffix(p.IPBlock.CIDR, "/0")) {
				t.Errorf("egress rule %d allows the whole internet: %s", i, p.IPBlock.CIDR)
			}
		}
	}
	for _, route := range r.config(t).Routes {
		up, _ := route["upstream"].(string)
		port := up[strings.LastIndex(up, ":")+1:]
		allowed := slices.ContainsFunc(np.Spec.Egress, func(e networkingv1.NetworkPolicyEgressRule) bool {
			return slices.ContainsFunc(e.Ports, func(p networkingv1.NetworkPolicyPort) bool { return p.Port != nil && p.Port.String() == port })
		})
		if !allowed {
			t.Errorf("route %v: no egress rule allows its upstream %s", route["name"], up)
		}
	}
	for i, in := range np.Spec.Ingress {
		if len(in.From) == 0 {
			t.Errorf("ingress rule %d admits anyone to %+v", i, in.Ports)
		}
	}
}

// checkServiceMonitor: it scrapes the admin Service as job "spacegate",
// the job the alerts and the dashboard expect.
func checkServiceMonitor(t *testing.T, r *rendered) {
	sm := r.serviceMonitor
	if sm == nil {
		return
	}
	var scraped []*corev1.Service
	for _, s := range r.services {
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err == nil && sel.Matches(labels.Set(s.Labels)) {
			scraped = append(scraped, s)
		}
	}
	if len(scraped) != 1 || scraped[0].Labels["app.kubernetes.io/component"] != "admin" {
		t.Fatalf("the ServiceMonitor selects %d Services, want the admin Service alone", len(scraped))
	}
	if job := scraped[0].Labels[sm.Spec.JobLabel]; job != "spacegate" {
		t.Errorf("the ServiceMonitor's job would be %q (label %q), want spacegate", job, sm.Spec.JobLabel)
	}
	token := r.adminToken(t)
	for _, e := range sm.Spec.Endpoints {
		if e.Port != "admin" || e.Path != "/metrics" {
			t.Errorf("ServiceMonitor endpoint %+v, want port admin, path /metrics", e)
		}
		if a := e.Authorization; a == nil || a.Type != "Bearer" || a.Credentials == nil || *a.Credentials != token {
			t.Errorf("ServiceMonitor endpoint authorization %+v, want Bearer from %+v, the token the gates read", a, token)
		}
	}
}

// adminToken returns the Secret and key the gates read their admin token
// from: the file admin.token_file names in its volume.
func (r *rendered) adminToken(t *testing.T) corev1.SecretKeySelector {
	t.Helper()
	f := r.config(t).Admin.TokenFile
	m, ok := r.mountOf(f)
	if !ok {
		t.Fatalf("no volume holds admin.token_file %s", f)
	}
	v := r.volume(t, m.Name)
	if v.Secret == nil {
		t.Fatalf("admin.token_file %s is in volume %s, not a Secret", f, m.Name)
	}
	sel := corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: v.Secret.SecretName}, Key: filepath.Base(f)}
	for _, it := range v.Secret.Items {
		if it.Path == filepath.Base(f) {
			sel.Key = it.Key
		}
	}
	return sel
}

// TestChartAdminToken: by default the chart makes the token's Secret;
// with admin.token.existingSecret the gates and the ServiceMonitor read
// that one, and the chart makes none.
func TestChartAdminToken(t *testing.T) {
	out, err := helmTemplate(t, []string{"ci/full-values.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	r := decode(t, out)
	tok := r.adminToken(t)
	s := r.secrets[tok.Name]
	if s == nil {
		t.Fatalf("the gates read the admin token from Secret %s, which the chart does not make", tok.Name)
	}
	if v := s.Data[tok.Key]; len(v) < 32 {
		t.Errorf("generated admin token of %d bytes, want at least 32", len(v))
	}

	out, err = helmTemplate(t, []string{"ci/full-values.yaml"}, "admin.token.existingSecret=ops-admin", "admin.token.secretKey=bearer")
	if err != nil {
		t.Fatal(err)
	}
	r = decode(t, out)
	if tok := r.adminToken(t); tok.Name != "ops-admin" || tok.Key != "bearer" {
		t.Errorf("the gates read the admin token from %+v, want ops-admin/bearer", tok)
	}
	if len(r.secrets) != 2 {
		t.Errorf("%d Secrets with an existing admin token Secret, want the TLS and CA ones only", len(r.secrets))
	}
	checkConfig(t, r)
	checkServiceMonitor(t, r)
}

// checkCertificate: cert-manager writes the Secret the pods mount.
func checkCertificate(t *testing.T, r *rendered) {
	if r.certificate == nil {
		return
	}
	if v := r.volume(t, "tls"); v.Secret == nil || v.Secret.SecretName != r.certificate.Spec.SecretName {
		t.Errorf("the Certificate writes Secret %q, the pods mount %+v", r.certificate.Spec.SecretName, v.Secret)
	}
}

// TestChartRefuses: values that cannot work fail the render with a reason.
func TestChartRefuses(t *testing.T) {
	tests := []struct {
		name string
		sets []string
		want string
	}{
		{"DNS upstream without egressTo", []string{"routes[0].upstream=db.internal:5432"}, "give routes[].egressTo"},
		{"PROXY protocol without trusted CIDRs", []string{"service.proxyProtocol=true"}, "trusted_cidrs"},
		{"protocols sharing a port", []string{"routes[1].port=5432"}, "shared by routes of different protocols"},
		{"unknown value", []string{"drain.timeout=30"}, "additional properties 'timeout' not allowed"},
		{"limits beside drain", []string{"config.limits.drain_timeout=30s"}, "set it with drain.drainTimeoutSeconds"},
		{"cert-manager without issuer", []string{"tls.certManager.enabled=true", "tls.certManager.dnsNames={a.example}"}, "tls.certManager.issuerRef.name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// --set on a list element replaces the whole element:
			// give the routes whole.
			sets := append([]string{
				"routes[0].name=sushi-db", "routes[0].protocol=postgres", "routes[0].port=5432",
				"routes[1].name=sushi-cache", "routes[1].protocol=redis", "routes[1].port=6380", "routes[1].upstream=10.0.0.6:6379",
			}, tt.sets...)
			if !slices.ContainsFunc(tt.sets, func(s string) bool { return strings.HasPrefix(s, "routes[0].upstream=") }) {
				sets = append(sets, "routes[0].upstream=10.0.0.5:5432")
			}
			_, err := helmTemplate(t, nil, sets...)
			if err == nil {
				t.Fatalf("helm template succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error does not contain %q:\n%v", tt.want, err)
			}
		})
	}
}
