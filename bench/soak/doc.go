// Command soak runs spacegate under steady load for a bounded time while its
// configuration churns, and fails if the gate grows or loses transactions.
//
// It builds spacegate from ./cmd/spacegate, makes the quickstart layout
// (spacegate quickstart --no-serve) in a temporary directory, rewrites the
// config to free ports and to a PostgreSQL and Redis of its own (never the
// machine's 5432 and 6379), and serves it. Then, for -duration:
//
//   - pgbench (TPC-B, -c 4) runs through the gate with the quickstart
//     client certificate;
//   - every 10 s a rules file is rewritten with a changed description, and
//     the gate must reload it (config generation goes up);
//   - every minute a new client certificate is issued by the space CA, a
//     session is opened with it, the certificate is revoked by rewriting the
//     CRL, and that session must be cut (FATAL 57P01) while pgbench goes on;
//   - every 10 s the gate's RSS (VmRSS of /proc/PID/status) and goroutines
//     (go_goroutines of /metrics) are sampled.
//
// At the end it prints min, max, first and last of both series and
// pgbench's failed transaction count, and exits 1 if RSS or goroutines grew
// more than 20% from the first sample after warm-up, if any transaction
// failed, or if a reload or a cut did not happen.
//
// Usage:
//
//	go run ./bench/soak [-duration 30m] [-clients 4] [-warmup D] [-keep]
//
// It needs the PostgreSQL server binaries, pgbench and redis-server (Debian
// packages postgresql, postgresql-client, redis-server).
package main
