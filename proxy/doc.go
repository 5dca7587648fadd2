// Package proxy is the spacegate gate itself: the listeners, the
// life of one client connection through the PostgreSQL or Redis front end,
// the checks that decide whether it may reach its upstream, and the splice that
// carries its bytes afterwards. It serves the admin API of package admin
// (Server implements admin.Gate) and updates its metrics.
//
// A Server serves one immutable Snapshot at a time, built from a
// config.Config and the files it names: the routes, one allowlist
// matcher per route, and the TLS material. Each connection reads the snapshot
// once, when it is accepted, so a connection never mixes two configurations.
//
// Nothing is written to an upstream before every check has passed: the source
// address, the client certificate and the connection limits. Refusals are
// sent to the client in its own protocol (a PostgreSQL ErrorResponse or a
// RESP error line) and say why in the client's terms; internals such as
// upstream addresses and file paths go to the log only.
//
// Each connection has a goroutine of its own from accept until its upstream
// is dialled. From there its two sockets belong to the engine of package
// internal/splice: on Linux one event loop per CPU around an edge-triggered
// epoll set, which copies both directions of many sessions with no
// goroutine, stack or buffer per session; elsewhere (and with
// Options.GoroutineSplice) a goroutine per direction. The gate gives the
// engine the PostgreSQL framer (pgframer.go) so that a cut lands between
// two messages, and the FATAL to send; the session's one end callback
// (sessionEnded, handoff.go) finishes the connection. Refusals told to the
// client close through the engine too, gracefully, with no thread waiting.
package proxy
