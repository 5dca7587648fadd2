package proxy

import "github.com/spacegate/spacegate/tlsconf"

// Reason says why a connection was refused or cut. One value feeds the audit
// log field, the metric label and the choice of client-facing error code.
type Reason uint8

// The reasons, in the order the checks run.
const (
	ReasonNone              Reason = iota
	ReasonProtocolViolation        // garbage, oversized packets, plaintext after SSLRequest
	ReasonTLSRequired              // a plaintext StartupMessage or Redis command
	ReasonHandshakeFailed          // the TLS handshake itself failed or timed out
	ReasonIPNotAllowed             // source address not in the route's IP rules
	ReasonCertMissing
	ReasonCertUntrusted
	ReasonCertUsage
	ReasonCertExpired
	ReasonCertNotYetValid
	ReasonCertRevoked
	ReasonCertWeakKey        // RSA under 2048 bits, or an unusual curve
	ReasonUnknownServerName  // SNI names no route of a shared listener
	ReasonIdentityNotAllowed // certificate valid, but not for this route
	ReasonUserMismatch       // PostgreSQL user not the one the certificate allows
	ReasonRouteDisabled
	ReasonTooManyConnections    // limits.max_connections
	ReasonRouteConnectionLimit  // the route's max_connections
	ReasonSourceConnectionLimit // limits.max_connections_per_source
	ReasonCertConnectionLimit   // limits.max_connections_per_certificate
	ReasonPendingEvicted        // made room in a full pending pool: closed
	ReasonIPNotAllowedPreTLS    // source allowed by no route of the listener, closed before TLS under pressure
	ReasonUpstreamUnavailable
	ReasonShutdown
	ReasonUserMissing         // a StartupMessage without a user name
	ReasonUnsupportedProtocol // a start-up packet of a protocol other than 3
)

var reasonNames = [...]string{
	ReasonNone:                  "",
	ReasonProtocolViolation:     "protocol_violation",
	ReasonTLSRequired:           "tls_required",
	ReasonHandshakeFailed:       "handshake_failed",
	ReasonIPNotAllowed:          "ip_not_allowed",
	ReasonCertMissing:           "cert_missing",
	ReasonCertUntrusted:         "cert_untrusted",
	ReasonCertUsage:             "cert_usage",
	ReasonCertExpired:           "cert_expired",
	ReasonCertNotYetValid:       "cert_not_yet_valid",
	ReasonCertRevoked:           "cert_revoked",
	ReasonCertWeakKey:           "cert_weak_key",
	ReasonUnknownServerName:     "unknown_server_name",
	ReasonIdentityNotAllowed:    "identity_not_allowed",
	ReasonUserMismatch:          "user_mismatch",
	ReasonRouteDisabled:         "route_disabled",
	ReasonTooManyConnections:    "too_many_connections",
	ReasonRouteConnectionLimit:  "route_connection_limit",
	ReasonSourceConnectionLimit: "source_connection_limit",
	ReasonCertConnectionLimit:   "certificate_connection_limit",
	ReasonPendingEvicted:        "pending_evicted",
	ReasonIPNotAllowedPreTLS:    "ip_not_allowed_pre_tls",
	ReasonUpstreamUnavailable:   "upstream_unavailable",
	ReasonShutdown:              "shutdown",
	ReasonUserMissing:           "user_missing",
	ReasonUnsupportedProtocol:   "unsupported_protocol",
}

// String returns the snake_case name used as the metric label and log value.
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// sqlstate returns the PostgreSQL error code a client sees for r.
func (r Reason) sqlstate() string {
	switch r {
	case ReasonProtocolViolation:
		return "08P01" // protocol_violation
	case ReasonTooManyConnections, ReasonRouteConnectionLimit, ReasonSourceConnectionLimit, ReasonCertConnectionLimit:
		return "53300" // too_many_connections
	case ReasonUpstreamUnavailable:
		return "08006" // connection_failure
	case ReasonRouteDisabled:
		return "57P03" // cannot_connect_now
	case ReasonShutdown:
		return "57P01" // admin_shutdown
	case ReasonUnsupportedProtocol:
		return "0A000" // feature_not_supported
	default:
		return "28000" // invalid_authorization_specification
	}
}

// certReason maps a tlsconf verification verdict onto a Reason.
func certReason(r tlsconf.Reason) Reason {
	switch r {
	case tlsconf.ReasonCertMissing:
		return ReasonCertMissing
	case tlsconf.ReasonCertUsage:
		return ReasonCertUsage
	case tlsconf.ReasonCertExpired:
		return ReasonCertExpired
	case tlsconf.ReasonCertNotYetValid:
		return ReasonCertNotYetValid
	case tlsconf.ReasonCertRevoked:
		return ReasonCertRevoked
	case tlsconf.ReasonCertWeakKey:
		return ReasonCertWeakKey
	default:
		return ReasonCertUntrusted
	}
}

// Refusal is a connection refused for a Reason. Msg is written for the client:
// it names the reason in the client's own terms and, where it helps, the fix.
// Err, if set, carries internal detail for the log only.
type Refusal struct {
	Reason Reason
	Msg    string
	Hint   string // the fix, if there is one; psql shows it as HINT
	Err    error

	quiet bool // nothing can be told to the client (its TLS failed, say)
}

func (r *Refusal) Error() string { return r.Msg }

func (r *Refusal) Unwrap() error { return r.Err }

func refuse(reason Reason, msg string, err error) *Refusal {
	return &Refusal{Reason: reason, Msg: msg, Err: err}
}
