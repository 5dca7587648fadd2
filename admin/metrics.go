package admin

import (
	"regexp"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
)

// Metrics are the gate's Prometheus metrics, prefix spacegate_. They are
// registered on their own Registry, never on the global default one, so
// that several gates (in tests) never collide.
//
// The exported collectors are the gate's to update, with the labels their
// comments name; they are set by NewMetrics and must not be replaced. All
// are safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry
	own      []prometheus.Collector // the spacegate_ collectors

	Accepted        prometheus.Counter       // connections_accepted_total
	Refused         *prometheus.CounterVec   // connections_refused_total{route,reason}
	Established     *prometheus.CounterVec   // connections_established_total{route}
	Closed          *prometheus.CounterVec   // connections_closed_total{route}
	Cut             *prometheus.CounterVec   // connections_cut_total{route,reason}
	UpstreamLost    *prometheus.CounterVec   // connections_upstream_lost_total{route}
	Reloads         *prometheus.CounterVec   // reloads_total{result}
	LastReload      prometheus.Gauge         // last_reload_success_timestamp_seconds
	ReloadOK        prometheus.Gauge         // config_last_reload_successful
	ConfigInfo      *prometheus.GaugeVec     // config_info{fingerprint}
	RouteRulesInfo  *prometheus.GaugeVec     // route_rules_info{route,digest}
	Cancels         *prometheus.CounterVec   // cancel_requests_total{route,result}
	Active          *prometheus.GaugeVec     // connections_active{route}
	Rules           *prometheus.GaugeVec     // ip_rules{route}
	UpstreamUp      *prometheus.GaugeVec     // upstream_up{route}
	Generation      prometheus.Gauge         // config_generation
	CertExpiry      *prometheus.GaugeVec     // cert_expiry_timestamp_seconds{route,kind,subject}
	CRLNextUpdate   *prometheus.GaugeVec     // crl_next_update_timestamp_seconds{route,issuer}
	Handshake       *prometheus.HistogramVec // handshake_seconds{route}
	UpstreamConnect *prometheus.HistogramVec // upstream_connect_seconds{route}
	Duration        *prometheus.HistogramVec // connection_duration_seconds{route}
	Bytes           *prometheus.CounterVec   // bytes_total{route,direction}
	Panics          prometheus.Counter       // panics_total

	clientExpiry *clientExpiryCollector // client_cert_expiry_timestamp_seconds{route,identity}
}

// NewMetrics creates the metrics and registers them, with the Go and process
// collectors, on a new registry.
func NewMetrics() *Metrics {
	const ns = "spacegate"
	routeLabel := []string{"route"}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Accepted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "connections_accepted_total",
			Help: "TCP connections accepted on every listener."}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "connections_refused_total",
			Help: "Connections refused, by route and reason."}, []string{"route", "reason"}),
		Established: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "connections_established_total",
			Help: "Connections that passed every check and reached their upstream."}, routeLabel),
		Closed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "connections_closed_total",
			Help: "Established connections that have ended."}, routeLabel),
		Cut: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "connections_cut_total",
			Help: "Live connections cut because a reload or a certificate expiry took away their right, by route and reason."}, []string{"route", "reason"}),
		UpstreamLost: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "connections_upstream_lost_total",
			Help: "Live PostgreSQL sessions whose upstream closed them with neither an ErrorResponse nor the client's Terminate: a database restart or crash, a killed backend, a network fault."}, routeLabel),
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "reloads_total",
			Help: "Configuration reloads, by result (ok, error)."}, []string{"result"}),
		LastReload: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "last_reload_success_timestamp_seconds",
			Help: "When the configuration in force was loaded."}),
		ReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "config_last_reload_successful",
			Help: "1 if the last reload succeeded (or none was tried), 0 if it failed and the previous configuration keeps serving."}),
		ConfigInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "config_info",
			Help: "Always 1; fingerprint names the content in force, equal on replicas that serve the same files."}, []string{"fingerprint"}),
		RouteRulesInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "route_rules_info",
			Help: "Always 1; digest names the route's IP rules in force (ids and CIDRs), equal on replicas that read the same rules."}, []string{"route", "digest"}),
		Cancels: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cancel_requests_total",
			Help: "PostgreSQL CancelRequests, by route and result (forwarded, refused, failed)."}, []string{"route", "result"}),
		Active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "connections_active",
			Help: "Connections currently spliced to their upstream."}, routeLabel),
		Rules: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "ip_rules",
			Help: "IP rules in force per route."}, routeLabel),
		UpstreamUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "upstream_up",
			Help: "1 if the last probe (a TCP connect every 10s) reached the route's upstream, else 0."}, routeLabel),
		Generation: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "config_generation",
			Help: "Generation of the configuration in force; starts at 1."}),
		CertExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "cert_expiry_timestamp_seconds",
			Help: "Expiry time of the server certificate and of each trusted CA, by route."}, []string{"route", "kind", "subject"}),
		CRLNextUpdate: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "crl_next_update_timestamp_seconds",
			Help: "nextUpdate of the CRL in force, by route and the CRL's issuer; past it, certificates revoked since are not in the CRL."}, []string{"route", "issuer"}),
		clientExpiry: &clientExpiryCollector{
			desc: prometheus.NewDesc(ns+"_client_cert_expiry_timestamp_seconds",
				"Expiry time of the nearest-expiring client certificate admitted per route and identity (URI SAN, else CN) in the last 24 hours.",
				[]string{"route", "identity"}, nil),
			seen: map[[2]string]clientSeen{},
			ttl:  clientExpiryTTL,
			now:  time.Now,
		},
		Handshake: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "handshake_seconds",
			Help: "Time from accept until every check has passed.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, routeLabel),
		UpstreamConnect: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "upstream_connect_seconds",
			Help: "Time to connect to the upstream.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, routeLabel),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "connection_duration_seconds",
			Help: "Lifetime of established connections.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 12)}, routeLabel),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "bytes_total",
			Help: "Bytes spliced, by route and direction (upstream: client to upstream; client: upstream to client)."}, []string{"route", "direction"}),
		Panics: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "panics_total",
			Help: "Panics recovered in a connection's code; each closed its connection, never the process. Any is a bug: see the log for the stack."}),
	}
	m.own = []prometheus.Collector{
		m.Accepted, m.Refused, m.Established, m.Closed, m.Cut, m.UpstreamLost, m.Reloads, m.LastReload, m.ReloadOK, m.ConfigInfo, m.RouteRulesInfo, m.Cancels, m.UpstreamUp, m.Active, m.Rules,
		m.Generation, m.CertExpiry, m.CRLNextUpdate, m.clientExpiry, m.Handshake, m.UpstreamConnect, m.Duration, m.Bytes, m.Panics,
	}
	// Present at 0 from the start, so that increase() sees the first
	// failed reload and dashboards show no gap.
	m.Reloads.WithLabelValues("ok")
	m.Reloads.WithLabelValues("error")
	m.ReloadOK.Set(1)
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

// ObserveClientCert records the expiry of a client certificate admitted on
// route, by identity (its URI SAN, else its CN). The nearest expiry per
// route and identity is kept for 24 hours after the identity's last
// connection, so that the certificate that replaced an expiring one ends
// its alert.
func (m *Metrics) ObserveClientCert(route, identity string, notAfter time.Time) {
	if identity == "" || notAfter.IsZero() {
		return
	}
	m.clientExpiry.observe(route, identity, notAfter)
}

// ClientExpiries returns what client_cert_expiry_timestamp_seconds
// exports: per route and identity seen in the last 24 hours, the nearest
// expiry, as CertExpiry of kind CertClient in no particular order.
func (m *Metrics) ClientExpiries() []CertExpiry {
	return m.clientExpiry.list()
}

// RefusedByRoute returns connections_refused_total of reason, by route,
// for the routes that have refused for it.
func (m *Metrics) RefusedByRoute(reason string) map[string]int64 {
	out := map[string]int64{}
	ch := make(chan prometheus.Metric, 64)
	go func() {
		m.Refused.Collect(ch)
		close(ch)
	}()
	for c := range ch {
		var pb dto.Metric
		if c.Write(&pb) != nil {
			continue
		}
		var route, why string
		for _, l := range pb.GetLabel() {
			switch l.GetName() {
			case "route":
				route = l.GetValue()
			case "reason":
				why = l.GetValue()
			}
		}
		if why == reason {
			out[route] += int64(pb.GetCounter().GetValue())
		}
	}
	return out
}
