package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spacegate/spacegate/internal/testenv"
)

// TestAdminWorkflow goes through the managed platform's workflow as a user
// would, against a real PostgreSQL behind a real gate: ca init, an IP rule,
// certs create and download with a prefix, psql with exactly the printed
// lines and sslmode=verify-ca, pgx with the PKCS#8 key, revoke, rotate, and
// the life of an IP rule as the gate's /v1/status shows it.
//
// The gate runs in this process. After each change of the files it is
// restarted (restartGate), which gives the same verdicts as a gate that
// reloads the files on change, without depending on when a reload happens.
func TestAdminWorkflow(t *testing.T) {
	testenv.Require(t, "psql")
	pg := testenv.StartPostgresT(t, testenv.PostgresOptions{})
	e := newAdminEnv(t, pg.Addr, "127.0.0.1:1")
	_, port, _ := net.SplitHostPort(e.pg)

	// With the gate down, a rule's status says so, and the exit status.
	var lo ruleView
	e.mustJSONCode(t, exitWait, &lo, "ip-rules", "create", "db", "--cidr", "127.0.0.1/32", "--description", "loopback")
	if lo.Status != ruleUnreachable {
		t.Errorf("rule created with the gate down has status %q, want %q", lo.Status, ruleUnreachable)
	}
	g := startGate(t, e.config)
	e.mustJSON(t, &lo, "ip-rules", "get", "db", "--id", lo.ID)
	if lo.Status != ruleAuthorized {
		t.Errorf("rule in force has status %q, want %q", lo.Status, ruleAuthorized)
	}

	// certs create, certs download with a prefix, psql with the printed
	// lines.
	c := e.createCert(t, "db")
	dir := filepath.Join(t.TempDir(), "folder")
	out := e.mustRun(t, "certs", "download", "db", "--id", c.ID, "--prefix", "demo_", "--dir", dir, "--pkcs8")
	env := exportLines(out)
	conn := printedConnString(t, out)
	if !strings.Contains(conn, "sslmode=verify-ca") || !strings.Contains(conn, "port="+port) {
		t.Fatalf("download printed the psql connection %q, want sslmode=verify-ca and port %s", conn, port)
	}
	if got, err := psql(env, conn, "select 42"); err != nil || got != "42" {
		t.Fatalf("psql with the printed lines: %q, %v", got, err)
	}

	// pgx, as a JDBC-style client would, with the key from the .pk8 file.
	if err := pgxPKCS8(t, filepath.Join(dir, "demo_postgresql.crt"), filepath.Join(dir, "demo_postgresql.pk8"), filepath.Join(dir, "demo_root.crt"), port); err != nil {
		t.Errorf("pgx with the PKCS#8 key: %v", err)
	}

	// A certificate made for another route is refused on this one.
	other := e.createCert(t, "cache")
	otherDir := t.TempDir()
	e.mustRun(t, "certs", "download", "cache", "--id", other.ID, "--dir", otherDir)
	otherEnv := map[string]string{
		"PGSSLCERT": filepath.Join(otherDir, "postgresql.crt"), "PGSSLKEY": filepath.Join(otherDir, "postgresql.key"),
		"PGSSLROOTCERT": filepath.Join(otherDir, "root.crt"),
	}
	if _, err := psql(otherEnv, conn, "select 1"); err == nil {
		t.Errorf("a certificate of route cache connected to route db")
	}

	// Revoke: the next psql is refused, saying why.
	e.mustRun(t, "certs", "revoke", "db", "--id", c.ID)
	g = restartGate(t, g, e.config)
	if _, err := psql(env, conn, "select 1"); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("psql with a revoked certificate: %v, want a refusal saying revoked", err)
	}

	// Rotate inside the 75-day window: the replacement connects.
	short := e.createCert(t, "db", "--days", "30")
	var renewed []renewalView
	e.mustJSON(t, &renewed, "certs", "rotate")
	if len(renewed) != 1 || renewed[0].Old.ID != short.ID {
		t.Fatalf("certs rotate renewed %+v, want only %s", renewed, short.ID)
	}
	newDir := t.TempDir()
	out = e.mustRun(t, "certs", "download", "db", "--id", renewed[0].New.ID, "--prefix", "new_", "--dir", newDir)
	if got, err := psql(exportLines(out), printedConnString(t, out), "select 7"); err != nil || got != "7" {
		t.Errorf("psql with the rotated certificate: %q, %v", got, err)
	}

	// An IP rule made while the gate runs: authorizing until the gate has
	// it, then authorized.
	var r ruleView
	e.mustJSON(t, &r, "ip-rules", "create", "db", "--cidr", "10.9.0.0/16", "--description", "branch office")
	if r.Status != ruleAuthorizing && r.Status != ruleAuthorized {
		t.Errorf("new rule with the gate up has status %q", r.Status)
	}
	g = restartGate(t, g, e.config)
	if st := awaitStatus(t, e, r.ID, ruleAuthorized, time.Second); st != ruleAuthorized {
		t.Errorf("rule not authorized within a second of the gate loading it: %q", st)
	}
	var list []ruleView
	e.mustJSON(t, &list, "ip-rules", "list", "db")
	if len(list) != 2 || list[1].ID != r.ID || list[1].Status != ruleAuthorized {
		t.Errorf("ip-rules list: %+v", list)
	}
	var gone ruleView
	e.mustJSON(t, &gone, "ip-rules", "delete", "db", "--id", r.ID)
	if gone.Status != ruleDeleting && gone.Status != ruleDeleted {
		t.Errorf("deleted rule has status %q", gone.Status)
	}
	g = restartGate(t, g, e.config)
	st, err := fetchStatus(context.Background(), gateAdmin{base: "http://" + e.admin})
	if err != nil {
		t.Fatal(err)
	}
	for _, rs := range st.Routes {
		if rs.Name == "db" && (len(rs.RuleIDs) != 1 || rs.RuleIDs[0] != lo.ID) {
			t.Errorf("after delete the gate has rules %v in force, want only %s", rs.RuleIDs, lo.ID)
		}
	}
	g.stop(t)
	if code, stdout, _ := e.run(t, "ip-rules", "get", "db", "--id", lo.ID); code != exitWait || !strings.Contains(stdout, "status: "+ruleUnreachable) {
		t.Errorf("ip-rules get with the gate down: exit %d, want 3 (not known to be in force)\n%s", code, stdout)
	}
}

// awaitStatus polls `ip-rules get` until the rule has status want or wait
// passes, and returns the last status.
func awaitStatus(t *testing.T, e *adminEnv, id, want string, wait time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		var r ruleView
		e.mustJSON(t, &r, "ip-rules", "get", "db", "--id", id)
		if r.Status == want || time.Now().After(deadline) {
			return r.Status
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// printedConnString returns the connection string of the psql line that
// certs download printed.
func printedConnString(t *testing.T, out string) string {
	t.Helper()
	line := findLine(out, "psql ")
	conn, ok := strings.CutPrefix(line, `psql "`)
	if !ok || !strings.HasSuffix(conn, `"`) {
		t.Fatalf("certs download printed no psql line:\n%s", out)
	}
	return strings.TrimSuffix(conn, `"`)
}

// psql runs psql with the connection string conn and the environment env
// (the PGSSL* lines), as the user postgres, and returns what the query
// printed; the error holds psql's stderr.
func psql(env map[string]string, conn, query string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", conn, "-XAtc", query)
	cmd.Env = append(os.Environ(), "PGUSER=postgres", "PGDATABASE=postgres", "PGCONNECT_TIMEOUT=10")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", &psqlError{err: err, stderr: stderr.String()}
	}
	return strings.TrimSpace(stdout.String()), nil
}

type psqlError struct {
	err    error
	stderr string
}

func (e *psqlError) Error() string { return e.err.Error() + ": " + e.stderr }

// pgxPKCS8 connects with pgx through the gate on port, with the client
// certificate chain of certFile, the PKCS#8 DER key of pk8File, and the
// roots of rootFile, and runs a query.
func pgxPKCS8(t *testing.T, certFile, pk8File, rootFile, port string) error {
	t.Helper()
	der, err := os.ReadFile(pk8File)
	if err != nil {
		return err
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return err
	}
	var cert tls.Certificate
	for _, c := range readCerts(t, certFile) {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	cert.PrivateKey = key
	roots := x509.NewCertPool()
	for _, c := range readCerts(t, rootFile) {
		roots.AddCert(c)
	}
	cfg, err := pgx.ParseConfig("host=localhost port=" + port + " user=postgres dbname=postgres sslmode=require connect_timeout=10")
	if err != nil {
		return err
	}
	cfg.TLSConfig = &tls.Config{ServerName: "localhost", RootCAs: roots, Certificates: []tls.Certificate{cert}}
	cfg.Fallbacks = nil
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "select 5").Scan(&n); err != nil {
		return err
	}
	if n != 5 {
		t.Errorf("pgx query through the gate returned %d, want 5", n)
	}
	return nil
}
