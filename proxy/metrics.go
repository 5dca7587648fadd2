package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/spacegate/spacegate/tlsconf"
)

// Metrics are the gate's Prometheus metrics. They are registered on the
// registry given to NewMetrics, never on the global default one, so that
// several servers (in tests) never collide.
type Metrics struct {
	Registry *prometheus.Registry

	accepted        prometheus.Counter
	refused         *prometheus.CounterVec // route, reason
	established     *prometheus.CounterVec // route
	closed          *prometheus.CounterVec // route
	cut             *prometheus.CounterVec // route, reason
	reloads         *prometheus.CounterVec // result
	lastReload      prometheus.Gauge
	cancels         *prometheus.CounterVec // route, result
	active          *prometheus.GaugeVec   // route
	rules           *prometheus.GaugeVec   // route
	generation      prometheus.Gauge
	certExpiry      *prometheus.GaugeVec // kind: server|ca, route
	clientExpiry    *prometheus.GaugeVec // route, identity
	handshake       *prometheus.HistogramVec
	upstreamConnect *prometheus.HistogramVec
	duration        *prometheus.HistogramVec
	bytes           *prometheus.CounterVec // route, direction
}

// NewMetrics creates the metrics and registers them, with the Go and process
// collectors, on a new registry.
func NewMetrics() *Metrics {
	const ns = "spacegate"
	routeLabel := []string{"route"}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "connections_accepted_total",
			Help: "TCP connections accepted on every listener."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "connections_refused_total",
			Help: "Connections refused, by route and reason."}, []string{"route", "reason"}),
		established: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "connections_established_total",
			Help: "Connections that passed every check and reached their upstream."}, routeLabel),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "connections_closed_total",
			Help: "Established connections that have ended."}, routeLabel),
		cut: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "connections_cut_total",
			Help: "Live connections cut because a reload or a certificate expiry took away their right, by route and reason."}, []string{"route", "reason"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "reloads_total",
			Help: "Configuration reloads, by result (ok, error)."}, []string{"result"}),
		lastReload: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "last_reload_success_timestamp_seconds",
			Help: "When the configuration in force was loaded."}),
		cancels: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cancel_requests_total",
			Help: "PostgreSQL CancelRequests, by route and result (forwarded, refused, failed)."}, []string{"route", "result"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "connections_active",
			Help: "Connections currently spliced to their upstream."}, routeLabel),
		rules: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "ip_rules",
			Help: "IP rules in force per route."}, routeLabel),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "config_generation",
			Help: "Generation of the configuration in force; starts at 1."}),
		certExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "cert_expiry_timestamp_seconds",
			Help: "Expiry time of the server certificate and of each trusted CA, by route."}, []string{"route", "kind", "subject"}),
		clientExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "client_cert_expiry_timestamp_seconds",
			Help: "Expiry time of the nearest-expiring client certificate seen per route and identity (URI SAN, else CN)."}, []string{"route", "identity"}),
		handshake: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "handshake_seconds",
			Help: "Time from accept until every check has passed.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, routeLabel),
		upstreamConnect: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "upstream_connect_seconds",
			Help: "Time to connect to the upstream.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, routeLabel),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "connection_duration_seconds",
			Help: "Lifetime of established connections.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 12)}, routeLabel),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "bytes_total",
			Help: "Bytes spliced, by route and direction (upstream: client to upstream; client: upstream to client)."}, []string{"route", "direction"}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.accepted, m.refused, m.established, m.closed, m.cut, m.reloads, m.lastReload, m.cancels, m.active, m.rules,
		m.generation, m.certExpiry, m.clientExpiry, m.handshake, m.upstreamConnect, m.duration, m.bytes,
	)
	return m
}

// observeSnapshot publishes the gauges that describe a snapshot.
func (m *Metrics) observeSnapshot(s *Snapshot) {
	m.generation.Set(float64(s.Generation))
	m.rules.Reset() // a removed route's gauge goes
	m.certExpiry.Reset()
	for _, r := range s.Routes {
		m.rules.WithLabelValues(r.Name).Set(float64(r.Matcher.Len()))
		// Touch the per-route series so dashboards show zeros, not gaps.
		m.active.WithLabelValues(r.Name)
		m.established.WithLabelValues(r.Name)
		if r.Material == nil {
			continue
		}
		leaf := r.Material.Certificate.Leaf
		if leaf != nil {
			m.certExpiry.WithLabelValues(r.Name, "server", leaf.Subject.String()).Set(float64(leaf.NotAfter.Unix()))
		}
		for _, ca := range r.Material.CAs {
			m.certExpiry.WithLabelValues(r.Name, "ca", ca.Subject.String()).Set(float64(ca.NotAfter.Unix()))
		}
	}
}

// observeClientCert records the expiry of an admitted client certificate,
// keeping per identity the nearest one seen, so that an alert fires for
// the certificate that will fail first.
func (m *Metrics) observeClientCert(route string, id tlsconf.Identity) {
	name := id.CommonName
	if len(id.URIs) > 0 {
		name = id.URIs[0]
	}
	if name == "" || id.NotAfter.IsZero() {
		return
	}
	g := m.clientExpiry.WithLabelValues(route, name)
	exp := float64(id.NotAfter.Unix())
	if cur := gaugeValue(g); cur == 0 || exp < cur {
		g.Set(exp)
	}
}

func gaugeValue(g prometheus.Gauge) float64 {
	var pb dto.Metric
	if err := g.Write(&pb); err != nil {
		return 0
	}
	return pb.GetGauge().GetValue()
}
