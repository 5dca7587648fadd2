package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spacegate/spacegate/internal/safefile"
	"github.com/spacegate/spacegate/internal/testenv"
	"github.com/spacegate/spacegate/tlsconf"
)

// runBinary runs the spacegate binary and fails t if it has not exited
// within d.
func runBinary(t *testing.T, d time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, needBinary(t), args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("spacegate %s still running after %s", strings.Join(args, " "), d)
	}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return code, out.String(), errOut.String()
}

// TestCheckRefusesHostileFiles: `spacegate check` exits 1 at once, naming
// the file, for each file of the quickstart config replaced by a FIFO, a
// symlink to /dev/zero, a directory or a file over its limit; and `serve`
// fails at once the same way.
func TestCheckRefusesHostileFiles(t *testing.T) {
	dir, _ := makeQuickstart(t)
	config := filepath.Join(dir, "spacegate.yaml")
	for _, f := range []struct {
		rel string
		lim safefile.Limit
	}{
		{"spacegate.yaml", safefile.Config},
		{"rules/dev-postgres.yaml", safefile.Rules},
		{"pki/server.crt", safefile.Certificate},
		{"pki/server.key", safefile.Key},
		{"pki/ca.crt", safefile.CABundle},
		{"pki/ca.crl", safefile.CRL},
	} {
		path := filepath.Join(dir, f.rel)
		orig, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range testenv.HostileFiles() {
			t.Run(f.rel+"/"+h.Name, func(t *testing.T) {
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
				defer func() {
					if err := os.RemoveAll(path); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(path, orig, 0o600); err != nil {
						t.Fatal(err)
					}
				}()
				h.Plant(t, path, f.lim.Max)
				for _, args := range [][]string{{"check", "--config", config}, {"serve", "--config", config}} {
					start := time.Now()
					code, stdout, stderr := runBinary(t, 20*time.Second, args...)
					took := time.Since(start)
					if code != exitError {
						t.Errorf("%s: exit code %d, want %d\nstdout: %s\nstderr: %s", args[0], code, exitError, stdout, stderr)
					}
					said := stdout + stderr
					if !strings.Contains(said, path+" is ") || !strings.Contains(said, h.Problem) {
						t.Errorf("%s says:\n%s\nwant a sentence naming %s and saying %q", args[0], said, path, h.Problem)
					}
					if took > 5*time.Second {
						t.Errorf("%s took %s to refuse", args[0], took)
					}
				}
			})
		}
	}
	// Restored, the same config passes.
	if code, stdout, stderr := runBinary(t, 20*time.Second, "check", "--config", config); code != exitOK {
		t.Fatalf("check of the restored config: exit code %d\n%s%s", code, stdout, stderr)
	}
}

// TestServeRefusesHostileConfig: `serve --config` with /dev/zero, a FIFO
// or a directory fails at once with a sentence, where it used to read
// /dev/zero until memory ran out and block on the FIFO forever.
func TestServeRefusesHostileConfig(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "spacegate.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ path, want string }{
		{"/dev/zero", "config file /dev/zero is a character device, not a regular file"},
		{fifo, "config file " + fifo + " is a FIFO (named pipe), not a regular file"},
		{dir, "config file " + dir + " is a directory, not a regular file"},
	} {
		for _, cmd := range []string{"serve", "check"} {
			start := time.Now()
			code, stdout, stderr := runBinary(t, 20*time.Second, cmd, "--config", tt.path)
			if code != exitError || !strings.Contains(stdout+stderr, tt.want) {
				t.Errorf("%s --config %s: exit %d, output:\n%s%s\nwant exit %d and %q", cmd, tt.path, code, stdout, stderr, exitError, tt.want)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("%s --config %s took %s", cmd, tt.path, took)
			}
		}
	}
}

// TestCheckWarnsStaleCRL: a CRL past its nextUpdate is a warning naming
// the file and the date, and the check still passes.
func TestCheckWarnsStaleCRL(t *testing.T) {
	dir, _ := makeQuickstart(t)
	ca, err := tlsconf.LoadCA(filepath.Join(dir, "pki", "ca.crt"), filepath.Join(dir, "pki", "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	next := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	crl, err := ca.CRL(nil, big.NewInt(99), next.Add(-24*time.Hour), next)
	if err != nil {
		t.Fatal(err)
	}
	crlFile := filepath.Join(dir, "pki", "ca.crl")
	if err := os.WriteFile(crlFile, crl, 0o644); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "spacegate.yaml")
	want := "CRL file " + crlFile
	code, stdout, stderr := runBinary(t, 20*time.Second, "check", "--config", config)
	if code != exitOK {
		t.Fatalf("check: exit code %d, want 0 (a stale CRL is a warning)\n%s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "warning: "+want) || !strings.Contains(stdout, "past its nextUpdate of 2026-01-02T03:04:05Z") {
		t.Errorf("check printed:\n%s\nwant a warning naming %s and 2026-01-02T03:04:05Z", stdout, crlFile)
	}
	code, stdout, _ = runBinary(t, 20*time.Second, "check", "--json", "--config", config)
	var res struct {
		OK       bool     `json:"ok"`
		Warnings []string `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("check --json: %v\n%s", err, stdout)
	}
	if code != exitOK || !res.OK || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], want) {
		t.Errorf("check --json: exit %d, %+v; want ok and one warning naming %s", code, res, crlFile)
	}
}

// reloads returns the gate's spacegate_reloads_total{result} and its
// config generation.
func reloads(t *testing.T, admin, result string) (n, generation float64) {
	t.Helper()
	fams := scrapeMetrics(t, admin)
	for _, m := range fams["spacegate_reloads_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "result" && l.GetValue() == result {
				n = m.GetCounter().GetValue()
			}
		}
	}
	for _, m := range fams["spacegate_config_generation"].GetMetric() {
		generation = m.GetGauge().GetValue()
	}
	return n, generation
}

// TestServeFIFORulesFile is issue 12's third finding, end to end against a
// running `spacegate serve`: a FIFO where the rules file should be fails
// the reload at once (logged naming the file and counted), a client still
// gets in under the old rules, a revocation made once the file is back
// takes effect, and SIGTERM with the FIFO back in place ends the process
// within drain_timeout.
func TestServeFIFORulesFile(t *testing.T) {
	g := startGateBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rules := filepath.Join(g.dir, "rules", qsPostgresRoute+".yaml")
	orig, err := os.ReadFile(rules)
	if err != nil {
		t.Fatal(err)
	}
	plantFIFO := func() {
		t.Helper()
		if err := os.Remove(rules); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mkfifo(rules, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	waitMetric := func(what string, cond func(errors, generation float64) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			n, gen := reloads(t, g.addrs.admin, "error")
			if cond(n, gen) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s within 10s (reload errors %v, generation %v)", what, n, gen)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	errs0, gen0 := reloads(t, g.addrs.admin, "error")

	plantFIFO()
	waitMetric("failed reload", func(n, _ float64) bool { return n > errs0 })
	if _, gen := reloads(t, g.addrs.admin, "error"); gen != gen0 {
		t.Errorf("generation %v after a failed reload, want %v", gen, gen0)
	}
	c, err := pgx.Connect(ctx, gateConnString(g.dir, g.addrs.pg))
	if err != nil {
		t.Fatalf("a good client under the old rules, with a FIFO for the rules file: %v", err)
	}
	defer c.Close(context.Background())

	// Back to a file: the next reload loads it, and a revocation then
	// takes effect.
	if err := os.Remove(rules); err != nil {
		t.Fatal(err)
	}
	writeFile(t, rules, string(orig))
	waitMetric("reload of the restored rules file", func(_, gen float64) bool { return gen > gen0 })
	entries, err := os.ReadDir(filepath.Join(g.dir, "pki", "clients"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("quickstart client certificates: %v, %v", entries, err)
	}
	_, gen1 := reloads(t, g.addrs.admin, "error")
	if code, stdout, stderr := runBinary(t, 30*time.Second, "certs", "revoke", qsPostgresRoute, "--id", entries[0].Name(), "--config", g.config); code != exitOK {
		t.Fatalf("certs revoke: exit %d\n%s%s", code, stdout, stderr)
	}
	waitMetric("reload of the new CRL", func(_, gen float64) bool { return gen > gen1 })
	if c2, err := pgx.Connect(ctx, gateConnString(g.dir, g.addrs.pg)); err == nil {
		c2.Close(ctx)
		t.Error("the revoked certificate still got in")
	} else if !strings.Contains(err.Error(), "was revoked") {
		t.Errorf("the revoked certificate was refused with %v, want a message saying it was revoked", err)
	}

	// SIGTERM while every reload fails on a FIFO: the gate still stops,
	// well within drain_timeout (10s) and a few seconds.
	plantFIFO()
	errs1, _ := reloads(t, g.addrs.admin, "error")
	waitMetric("failed reload", func(n, _ float64) bool { return n > errs1 })
	start := time.Now()
	code, log := g.proc.stop(t, syscall.SIGTERM, 15*time.Second)
	took := time.Since(start)
	if code != exitOK {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	t.Logf("exited %s after SIGTERM", took.Round(time.Millisecond))
	if !strings.Contains(log, `reload failed`) || !strings.Contains(log, rules+" is a FIFO (named pipe), not a regular file") {
		t.Errorf("the log does not name the FIFO in a failed reload:\n%s", log)
	}
}
