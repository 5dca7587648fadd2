package admin

import (
	"cmp"
	"slices"
	"strings"
	"time"
)

// Status is the document served at /v1/status. Upstream addresses are left
// out on purpose: the admin endpoint may be reachable by more people than
// the config file.
type Status struct {
	// Name is the replica's name: the host name, or serve --replica-name
	// ($SPACEGATE_REPLICA_NAME). It tells the replicas of a fleet apart.
	Name string `json:"name"`
	// Fingerprint names the content in force (see Fingerprint in package
	// proxy): equal on replicas that serve the same files, stable across
	// restarts. Generation only counts reloads of one process.
	Fingerprint string        `json:"fingerprint"`
	Generation  uint64        `json:"generation"`
	LoadedAt    time.Time     `json:"loaded_at"`
	Ready       bool          `json:"ready"`
	Routes      []RouteStatus `json:"routes"`
	Connections []Conn        `json:"connections"`
	// CertExpiries are the certificates the gate serves (kind "server"),
	// trusts ("ca") and admitted in the last 24 hours ("client", the
	// nearest expiry per identity), nearest first. A gate older than this
	// field leaves it out: nil after decoding.
	CertExpiries []CertExpiry `json:"cert_expiries"`
}

// RouteStatus is one route in /v1/status.
type RouteStatus struct {
	Name       string   `json:"name"`
	Protocol   string   `json:"protocol"`
	Listen     string   `json:"listen"`
	Enabled    bool     `json:"enabled"`
	Rules      int      `json:"rules"`
	MaxIPRules int      `json:"max_ip_rules"`
	RuleIDs    []string `json:"rule_ids"`
	// RulesDigest names the route's rules in force, ids and CIDRs: equal
	// on replicas that read the same rules.
	RulesDigest string `json:"rules_digest"`
	// ServerCertSerial is the serial of the certificate the route serves,
	// as `spacegate certs` prints serials.
	ServerCertSerial string `json:"server_cert_serial,omitempty"`
	// CAFingerprints are the SHA-256 of each CA certificate the route
	// trusts (hex, of the DER), in bundle order.
	CAFingerprints []string `json:"ca_fingerprints"`
	// CRLs are the revocation lists in force for the route, one per issuer.
	CRLs               []CRL     `json:"crls"`
	Active             int       `json:"active"`
	ServerCertNotAfter time.Time `json:"server_cert_not_after,omitzero"`
	// Upstream is the last probe of the upstream; nil before the first.
	Upstream *UpstreamHealth `json:"upstream,omitempty"`
	// UpstreamUnavailable counts the connections refused since the gate
	// started because the upstream could not be reached, as
	// spacegate_connections_refused_total{reason="upstream_unavailable"}.
	UpstreamUnavailable int64 `json:"upstream_unavailable_total"`
}

// CRL is one revocation list in force: whose, which, and until when.
type CRL struct {
	Issuer string `json:"issuer"`
	// Number is the CRL's cRLNumber in decimal, "" when it has none. Each
	// CRL that `spacegate certs revoke` signs has a higher one.
	Number     string    `json:"number"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update,omitzero"`
	// Revoked counts the serials it lists.
	Revoked int `json:"revoked"`
}

// UpstreamHealth is the last probe of a route's upstream.
type UpstreamHealth struct {
	Reachable bool      `json:"reachable"`
	CheckedAt time.Time `json:"checked_at"`
	// Error says why the last probe failed, without the upstream's address
	// (status readers may not be the config's readers).
	Error string `json:"error,omitempty"`
}

// Conn describes one live connection in /v1/status.
type Conn struct {
	ID           string    `json:"id"`
	Route        string    `json:"route"`
	Source       string    `json:"source"`
	Phase        string    `json:"phase"`
	Since        time.Time `json:"since"`
	IPRule       string    `json:"ip_rule,omitempty"`
	CertSubject  string    `json:"cert_subject,omitempty"`
	CertSerial   string    `json:"cert_serial,omitempty"`
	CertNotAfter time.Time `json:"cert_not_after,omitzero"`
	User         string    `json:"user,omitempty"`
	Database     string    `json:"database,omitempty"`
}

// Kinds of CertExpiry.
const (
	CertServer = "server"
	CertCA     = "ca"
	CertClient = "client"
)

// CertExpiry is one certificate the gate serves, trusts or has seen.
type CertExpiry struct {
	Kind     string    `json:"kind"` // CertServer, CertCA or CertClient
	Route    string    `json:"route"`
	Subject  string    `json:"subject"` // for clients: URI SAN, else CN
	NotAfter time.Time `json:"not_after"`
}

// SortCertExpiries orders es nearest first; equal times by kind, route and
// subject, so that the order is stable from one call to the next.
func SortCertExpiries(es []CertExpiry) {
	slices.SortFunc(es, func(a, b CertExpiry) int {
		if c := a.NotAfter.Compare(b.NotAfter); c != 0 {
			return c
		}
		return cmp.Or(strings.Compare(a.Kind, b.Kind), strings.Compare(a.Route, b.Route), strings.Compare(a.Subject, b.Subject))
	})
}
