// Command bench is spacegate's load-test harness: it measures spacegate side
// by side with the proxies users would pick instead, on one machine, in one
// run.
//
// It starts a throwaway PostgreSQL (ssl=on) and Redis (with a tls-port), a
// space PKI made by `spacegate quickstart`, spacegate built from this
// checkout, and the peers: stunnel (protocol=pgsql and a Redis service),
// PgBouncer (session mode, client_tls_sslmode=verify-full) and HAProxy (TCP
// passthrough, the floor of one plain hop). Every path uses TLS with the
// same client certificate; the direct paths talk TLS to the servers
// themselves.
//
// Each scenario (pgbench, a bulk COPY, redis-benchmark, idle connections,
// psql and pgbench -C during a flood of idle sockets or ClientHellos)
// runs every target in turn, rotating the order, for several rounds, and
// reports the median throughput, latency percentiles, the proxy's CPU time
// per transaction (from /proc/PID/stat around a fixed amount of work), its
// peak RSS, and ratios to the best peer. It prints a markdown table and
// writes results JSON, markdown and an SVG chart under bench/results.
//
// Usage:
//
//	go run ./bench [-quick] [-only scenario,...] [-rounds N] [-out DIR]
//
// See bench/README.md for the scenarios and how to read the results.
package main
