// Package testenv starts throwaway servers and mints test credentials for
// spacegate's integration tests.
//
// StartPostgres and StartRedis run real PostgreSQL and Redis servers on free
// 127.0.0.1 ports, each in its own temporary directory and process group, so
// that tests never touch a system server on the well-known ports. Their *T
// variants skip the test when a binary is missing and register cleanup.
//
// Require decides what a missing binary means: the test is skipped with the
// binary's name and the Debian package that provides it, unless
// SPACEGATE_REQUIRE_INTEGRATION=1 (set by CI), where it fails instead.
//
// PostgreSQL refuses to run as root. When the tests run as root, initdb and
// postgres are started as the unprivileged "postgres" user, which owns the
// server's directory.
package testenv
