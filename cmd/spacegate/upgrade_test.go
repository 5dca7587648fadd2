package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/spacegate/spacegate/internal/testenv"
)

// Timings of the upgrade test: the old gate keeps accepting for
// upgradeShutdownDelay after SIGTERM, then waits upgradeDrain for live
// sessions before it cuts them.
const (
	upgradeShutdownDelay = time.Second
	upgradeDrain         = 3 * time.Second
)

// TestZeroDowntimeUpgrade upgrades a gate on one machine as deploy/README.md
// describes: the new process starts beside the old one on the same
// addresses (SO_REUSEPORT), and once it is ready the old one gets SIGTERM
// and drains. pgbench -C, a new connection per transaction, runs through
// the gate the whole time and must see no failed connection; sessions open
// on the old process finish their query, or are cut at its drain deadline.
func TestZeroDowntimeUpgrade(t *testing.T) {
	testenv.Require(t, "pgbench")
	bin := needBinary(t)
	pg := testenv.StartPostgresT(t, testenv.PostgresOptions{})
	if out, err := exec.Command("pgbench", "-i", "-s", "1", "-q", pg.ConnString()).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v: %s", err, out)
	}

	dir, _ := makeQuickstart(t)
	gate := freeGateAddrs(t)
	configA := rewriteQuickstartConfig(t, dir, gate, pg.Addr, testenv.FreeAddr(t), "json")
	setLimits(t, configA, fmt.Sprintf("drain_timeout: %s\n  shutdown_delay: %s", upgradeDrain, upgradeShutdownDelay))
	// B: the same config but its own admin endpoint, which is not shared.
	adminB := testenv.FreeAddr(t)
	configB := filepath.Join(dir, "spacegate-b.yaml")
	copyConfig(t, configA, configB, "listen: "+gate.admin, "listen: "+adminB)

	a := startServe(t, bin, configA)
	a.waitReady(t, gate.admin)

	// Two sessions on A, before B exists.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	finishing, err := pgx.Connect(ctx, gateConnString(dir, gate.pg))
	if err != nil {
		t.Fatalf("connecting to A: %v", err)
	}
	defer finishing.Close(context.Background())
	lingering, err := pgx.Connect(ctx, gateConnString(dir, gate.pg))
	if err != nil {
		t.Fatalf("connecting to A: %v", err)
	}
	defer lingering.Close(context.Background())

	bench := startPgbench(t, dir, gate.pg, "-C", "-c", "4", "-j", "2", "-T", "6", "-S", "-n")

	testenv.WaitFor(t, 10*time.Second, "pgbench under way through the old gate", func() bool {
		return scrapeCounter(t, gate.admin, "spacegate_connections_established_total") >= 2+20
	})
	b := startServe(t, bin, configB)
	b.waitReady(t, adminB)
	// Both accept: the kernel spreads connections over them.
	testenv.WaitFor(t, 10*time.Second, "pgbench connections on the new gate", func() bool {
		return scrapeCounter(t, adminB, "spacegate_connections_established_total") >= 1
	})
	establishedA := scrapeCounter(t, gate.admin, "spacegate_connections_established_total")

	type result struct {
		err  error
		took time.Duration
	}
	finished, lingered := make(chan result, 1), make(chan result, 1)
	query := func(c *pgx.Conn, sql string, out chan<- result) {
		start := time.Now()
		var v any
		err := c.QueryRow(ctx, sql).Scan(&v)
		out <- result{err, time.Since(start)}
	}
	go query(finishing, "select pg_sleep(1.5)", finished)
	go query(lingering, "select pg_sleep(30)", lingered)
	testenv.WaitFor(t, 10*time.Second, "both queries to run upstream", func() bool {
		return runningQueries(t, pg.ConnString(), "select pg_sleep(%") == 2
	})
	sigterm := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	if r := <-finished; r.err != nil {
		t.Errorf("a query on the old gate, running at SIGTERM and shorter than its drain, failed: %v", r.err)
	}
	r := <-lingered
	cutAfter := time.Since(sigterm)
	switch deadline := upgradeShutdownDelay + upgradeDrain; {
	case r.err == nil:
		t.Errorf("a 30s query on the old gate completed; it should have been cut at the drain deadline")
	case cutAfter < deadline-250*time.Millisecond || cutAfter > deadline+3*time.Second:
		t.Errorf("the session left on the old gate ended %v after SIGTERM (%v), want at its drain deadline %v", cutAfter, r.err, deadline)
	}

	select {
	case <-a.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("the old gate did not exit within 15s of SIGTERM")
	}
	if code := a.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("the old gate exited with %d, want 0; log:\n%s", code, a.stderr)
	}

	out, errOut, err := bench.wait(30 * time.Second)
	processed := pgbenchProcessed(out)
	t.Logf("pgbench -C across the upgrade: %d transactions, %v established on the old gate before its SIGTERM", processed, establishedA)
	if err != nil {
		t.Errorf("pgbench failed: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	if !strings.Contains(out, "number of failed transactions: 0 ") {
		t.Errorf("pgbench reports failed transactions:\n%s", out)
	}
	for _, bad := range []string{"connection to server", "aborted", "error"} {
		if strings.Contains(errOut, bad) {
			t.Errorf("pgbench stderr mentions %q, a failed connection attempt:\n%s", bad, errOut)
		}
	}
	if processed < 50 {
		t.Errorf("pgbench processed %d transactions in 6s; want at least 50:\n%s", processed, out)
	}
	if establishedA < 1 {
		t.Errorf("the old gate established %v connections", establishedA)
	}
	if n := scrapeCounter(t, adminB, "spacegate_connections_established_total"); n < 1 {
		t.Errorf("the new gate established %v connections; the kernel should have given it some", n)
	}

	if code, log := b.stop(t, syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Errorf("the new gate exited with %d, want 0; log:\n%s", code, log)
	}
}

// runningQueries counts the sessions of the PostgreSQL server at
// connString, reached directly or through a gate, that are running a
// query like pattern (a LIKE pattern).
func runningQueries(t *testing.T, connString, pattern string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatalf("connecting to look at pg_stat_activity: %v", err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(ctx, "select count(*) from pg_stat_activity where state = 'active' and query like $1 and pid <> pg_backend_pid()", pattern).Scan(&n); err != nil {
		t.Fatalf("reading pg_stat_activity: %v", err)
	}
	return n
}

// setLimits replaces the quickstart config's drain_timeout line with limits.
func setLimits(t *testing.T, config, limits string) {
	t.Helper()
	data, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	const old = "drain_timeout: 10s"
	if !bytes.Contains(data, []byte(old)) {
		t.Fatalf("%s has no %q to replace:\n%s", config, old, data)
	}
	writeFile(t, config, strings.Replace(string(data), old, limits, 1))
}

// copyConfig writes src to dst with old replaced by new.
func copyConfig(t *testing.T, src, dst, old, new string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(old)) {
		t.Fatalf("%s has no %q to replace", src, old)
	}
	writeFile(t, dst, strings.Replace(string(data), old, new, 1))
}

// pgbenchProcess is pgbench running in the background.
type pgbenchProcess struct {
	cmd         *exec.Cmd
	out, errOut bytes.Buffer
	done        chan error
}

// startPgbench runs pgbench through the quickstart gate in dir at addr,
// with the quickstart client bundle, and the given options.
func startPgbench(t *testing.T, dir, addr string, args ...string) *pgbenchProcess {
	t.Helper()
	client := filepath.Join(dir, "client")
	_, port, _ := net.SplitHostPort(addr)
	p := &pgbenchProcess{cmd: exec.Command("pgbench", args...), done: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(),
		"PGHOST=localhost", "PGPORT="+port, "PGUSER=postgres", "PGDATABASE=postgres", "PGCONNECT_TIMEOUT=10",
		"PGSSLMODE=verify-full",
		"PGSSLCERT="+filepath.Join(client, "postgresql.crt"),
		"PGSSLKEY="+filepath.Join(client, "postgresql.key"),
		"PGSSLROOTCERT="+filepath.Join(client, "root.crt"),
	)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errOut
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting pgbench: %v", err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// wait waits up to timeout for pgbench to exit and returns its output.
func (p *pgbenchProcess) wait(timeout time.Duration) (stdout, stderr string, err error) {
	select {
	case err = <-p.done:
		p.done <- err // for the cleanup
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		err = <-p.done
		p.done <- err
		err = fmt.Errorf("pgbench did not finish within %v: %w", timeout, err)
	}
	return p.out.String(), p.errOut.String(), err
}

// pgbenchProcessed returns the transactions pgbench reports as processed.
func pgbenchProcessed(out string) int {
	var n int
	for line := range strings.Lines(out) {
		if _, err := fmt.Sscanf(line, "number of transactions actually processed: %d", &n); err == nil {
			return n
		}
	}
	return 0
}

// scrapeMetrics returns the metric families of the gate's /metrics.
func scrapeMetrics(t *testing.T, admin string) map[string]*dto.MetricFamily {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("scraping %s: %v", admin, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %s", admin, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the /metrics of %s: %v", admin, err)
	}
	return fams
}

// scrapeCounter returns the sum of the counter name over its label sets.
func scrapeCounter(t *testing.T, admin, name string) float64 {
	t.Helper()
	var sum float64
	for _, m := range scrapeMetrics(t, admin)[name].GetMetric() {
		sum += m.GetCounter().GetValue()
	}
	return sum
}
