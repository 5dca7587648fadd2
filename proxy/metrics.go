package proxy

import (
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/spacegate/spacegate/tlsconf"
)

// Metrics are the gate's Prometheus metrics. They are registered on the
// registry given to NewMetrics, never on the global default one, so that
// several servers (in tests) never collide.
type Metrics struct {
	Registry *prometheus.Registry
	own      []prometheus.Collector // the spacegate_ collectors

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
	upstreamUp      *prometheus.GaugeVec   // route
	generation      prometheus.Gauge
	certExpiry      *prometheus.GaugeVec // kind: server|ca, route
	crlNextUpdate   *prometheus.GaugeVec // route, issuer
	clientExpiry    *clientExpiryCollector
	handshake       *prometheus.HistogramVec
	upstreamConnect *prometheus.HistogramVec
	duration        *prometheus.HistogramVec
	bytes           *prometheus.CounterVec // route, direction
	panics          prometheus.Counter
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
		upstreamUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "upstream_up",
			Help: "1 if the last probe (a TCP connect every 10s) reached the route's upstream, else 0."}, routeLabel),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "config_generation",
			Help: "Generation of the configuration in force; starts at 1."}),
		certExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "cert_expiry_timestamp_seconds",
			Help: "Expiry time of the server certificate and of each trusted CA, by route."}, []string{"route", "kind", "subject"}),
		crlNextUpdate: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "crl_next_update_timestamp_seconds",
			Help: "nextUpdate of the CRL in force, by route and the CRL's issuer; past it, certificates revoked since are not in the CRL."}, []string{"route", "issuer"}),
		clientExpiry: &clientExpiryCollector{
			desc: prometheus.NewDesc(ns+"_client_cert_expiry_timestamp_seconds",
				"Expiry time of the nearest-expiring client certificate admitted per route and identity (URI SAN, else CN) in the last 24 hours.",
				[]string{"route", "identity"}, nil),
			seen: map[[2]string]clientSeen{},
			ttl:  clientExpiryTTL,
			now:  time.Now,
		},
		handshake: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "handshake_seconds",
			Help: "Time from accept until every check has passed.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, routeLabel),
		upstreamConnect: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "upstream_connect_seconds",
			Help: "Time to connect to the upstream.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, routeLabel),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "connection_duration_seconds",
			Help: "Lifetime of established connections.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 12)}, routeLabel),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "bytes_total",
			Help: "Bytes spliced, by route and direction (upstream: client to upstream; client: upstream to client)."}, []string{"route", "direction"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "panics_total",
			Help: "Panics recovered in a connection's code; each closed its connection, never the process. Any is a bug: see the log for the stack."}),
	}
	m.own = []prometheus.Collector{
		m.accepted, m.refused, m.established, m.closed, m.cut, m.reloads, m.lastReload, m.cancels, m.upstreamUp, m.active, m.rules,
		m.generation, m.certExpiry, m.crlNextUpdate, m.clientExpiry, m.handshake, m.upstreamConnect, m.duration, m.bytes, m.panics,
	}
	m.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.Registry.MustRegister(m.own...)
	return m
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// Names returns the name of every spacegate_ metric the gate exports, so
// that dashboards and alerts can be checked against it.
func (m *Metrics) Names() []string {
	ch := make(chan *prometheus.Desc, len(m.own))
	go func() {
		for _, c := range m.own {
			c.Describe(ch)
		}
		close(ch)
	}()
	var out []string
	for d := range ch {
		if sm := fqName.FindStringSubmatch(d.String()); sm != nil {
			out = append(out, sm[1])
		}
	}
	sort.Strings(out)
	return out
}

// observeSnapshot publishes the gauges that describe a snapshot.
func (m *Metrics) observeSnapshot(s *Snapshot) {
	m.generation.Set(float64(s.Generation))
	m.rules.Reset() // a removed route's gauge goes
	m.certExpiry.Reset()
	m.crlNextUpdate.Reset()
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
		if crl := r.Material.CRL; crl != nil && !crl.NextUpdate.IsZero() {
			m.crlNextUpdate.WithLabelValues(r.Name, crl.Issuer.String()).Set(float64(crl.NextUpdate.Unix()))
		}
	}
}

// observeClientCert records the expiry of an admitted client certificate.
func (m *Metrics) observeClientCert(route string, id tlsconf.Identity) {
	name := id.CommonName
	if len(id.URIs) > 0 {
		name = id.URIs[0]
	}
	if name == "" || id.NotAfter.IsZero() {
		return
	}
	m.clientExpiry.observe(route, name, id.NotAfter)
}

// clientExpiryTTL is how long an identity stays in the client expiry metric
// after its last connection. Without a bound, the identity of a replaced
// certificate would keep an expiry alert firing forever.
const clientExpiryTTL = 24 * time.Hour

// clientExpiryCollector exports, per route and identity, the nearest client
// certificate expiry seen, for identities seen within ttl. Safe for
// concurrent use.
type clientExpiryCollector struct {
	desc *prometheus.Desc
	ttl  time.Duration
	now  func() time.Time

	mu   sync.Mutex
	seen map[[2]string]clientSeen
}

type clientSeen struct {
	notAfter time.Time // the nearest expiry seen for the identity
	lastSeen time.Time
}

func (c *clientExpiryCollector) observe(route, identity string, notAfter time.Time) {
	k := [2]string{route, identity}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.seen[k]
	if !ok || notAfter.Before(v.notAfter) {
		v.notAfter = notAfter
	}
	v.lastSeen = c.now()
	c.seen[k] = v
}

func (c *clientExpiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *clientExpiryCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, v := range c.seen {
		if now.Sub(v.lastSeen) > c.ttl {
			delete(c.seen, k)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(v.notAfter.Unix()), k[0], k[1])
	}
}
