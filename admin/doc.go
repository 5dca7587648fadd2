// Package admin is the gate's admin HTTP API and its Prometheus metrics:
// the JSON documents it serves (Status, RouteStatus, Conn, UpstreamHealth,
// CertExpiry; Fleet, Replica, Difference), the Metrics the gate updates,
// the bearer-token rules of admin.token_file, and the Handler that serves
// /metrics, /healthz, /readyz, /v1/status, /v1/fleet (every replica of
// admin.fleet asked at once, and what differs between them) and, when
// asked, /debug/pprof/.
//
// The package knows nothing of the gate's internals: what the endpoints
// need of it is the small Gate interface, which proxy.Server implements.
// The same types decode the gate's answers in `spacegate status`, so the
// server and the CLI cannot drift apart.
package admin
