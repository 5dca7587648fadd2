package proxy

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/safefile"
	"github.com/spacegate/spacegate/internal/testenv"
)

// namedFile is a file of the hostile-files env's config, and its size limit.
type namedFile struct {
	kind string
	path string
	lim  safefile.Limit
}

// hostileFilesEnv starts a gate whose config names one file of each kind:
// besides newEnv's route db, a route up with upstream TLS files. The
// returned function makes a connection string for route db whose
// sslrootcert is a copy of the CA file, which the test replaces: pgx reads
// it with os.ReadFile, and would block on a FIFO.
func hostileFilesEnv(t *testing.T) (*env, []namedFile, func(*testenv.ClientCert) string) {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	upCA, upCert, upKey := filepath.Join(dir, "upstream-ca.crt"), filepath.Join(dir, "upstream.crt"), filepath.Join(dir, "upstream.key")
	client := pki.Client(t, "upstreamclient")
	root := filepath.Join(dir, "client-root.crt")
	for _, f := range [][2]string{{pki.CAFile, upCA}, {client.CertFile, upCert}, {client.KeyFile, upKey}, {pki.CAFile, root}} {
		data, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, f[1], string(data))
	}
	e := newEnv(t, envOptions{noRedis: true, pki: pki, extraRoute: fmt.Sprintf(`  - name: up
    protocol: postgres
    listen: %s
    upstream: %s
    upstream_tls: require
    upstream_ca_file: %s
    upstream_cert_file: %s
    upstream_key_file: %s
    ip_rules_file: rules.yaml
`, testenv.FreeAddr(t), sharedPostgres(t).Addr, upCA, upCert, upKey)})
	connString := func(c *testenv.ClientCert) string {
		return strings.Replace(e.pgConnString(c), "sslrootcert="+pki.CAFile, "sslrootcert="+root, 1)
	}
	return e, []namedFile{
		{"config", e.cfgPath, safefile.Config},
		{"rules", filepath.Join(e.dir, "rules.yaml"), safefile.Rules},
		{"server certificate", pki.ServerCertFile, safefile.Certificate},
		{"server key", pki.ServerKeyFile, safefile.Key},
		{"client CA bundle", pki.CAFile, safefile.CABundle},
		{"CRL", pki.CRLFile, safefile.CRL},
		{"upstream CA", upCA, safefile.UpstreamCA},
		{"upstream certificate", upCert, safefile.Certificate},
		{"upstream key", upKey, safefile.Key},
	}, connString
}

// TestReloadHostileFiles replaces each file the config names, in turn,
// with a FIFO, a symlink to /dev/zero, a directory and a file over its
// limit. Each reload fails at once naming the file, the old configuration
// keeps serving a good client, and once the file is back a later change (a
// revocation) takes effect. Then Run, cancelled with a FIFO in place,
// returns within drain_timeout.
func TestReloadHostileFiles(t *testing.T) {
	e, files, connString := hostileFilesEnv(t)
	live, err := pgConnect(t, connString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close(context.Background())
	toRevoke := e.pki.Client(t, "torevoke", testenv.ForRoutes("db"))
	doomed, err := pgConnect(t, connString(toRevoke))
	if err != nil {
		t.Fatal(err)
	}
	defer doomed.Close(context.Background())

	for _, f := range files {
		orig, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range testenv.HostileFiles() {
			t.Run(f.kind+"/"+h.Name, func(t *testing.T) {
				if err := os.Remove(f.path); err != nil {
					t.Fatal(err)
				}
				h.Plant(t, f.path, f.lim.Max)
				start := time.Now()
				err := reloadWithin(t, e, 5*time.Second)
				took := time.Since(start)
				if !hasProblem(err, f.path+" is ", h.Problem) {
					t.Errorf("Reload = %v; want a problem saying %q and %q", err, f.path+" is ", h.Problem)
				}
				t.Logf("reload refused in %s: %v", took.Round(time.Millisecond), err)
				requireAlive(t, live)
				fresh, err := pgConnect(t, connString(e.client))
				if err != nil {
					t.Errorf("a good client under the old configuration: %v", err)
				} else {
					fresh.Close(context.Background())
				}

				if err := os.RemoveAll(f.path); err != nil {
					t.Fatal(err)
				}
				renameWrite(t, f.path, orig)
				if err := reloadWithin(t, e, 5*time.Second); err != nil {
					t.Fatalf("Reload with the file restored: %v", err)
				}
			})
		}
	}
	if m := e.get(t, "/metrics"); !strings.Contains(m, `spacegate_reloads_total{result="error"}`) {
		t.Error(`failed reloads not counted in spacegate_reloads_total{result="error"}`)
	}

	// A later change still takes effect: a revocation cuts its session.
	e.pki.Revoke(t, toRevoke)
	requireCut(t, doomed, "was revoked")
	requireAlive(t, live)

	// With a FIFO in place and the watcher's reloads failing on it, Run
	// still returns within drain_timeout (5s) and a little.
	rules := files[1].path
	if err := os.Remove(rules); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(rules, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := reloadWithin(t, e, 5*time.Second); err == nil {
		t.Fatal("Reload with a FIFO for rules file succeeded")
	}
	live.Close(context.Background())
	doomed.Close(context.Background())
	start := time.Now()
	e.shutdown(10 * time.Second)
	t.Logf("Run returned %s after cancel", time.Since(start).Round(time.Millisecond))
}

// hasProblem reports whether one of err's problems says all of parts.
func hasProblem(err error, parts ...string) bool {
	for _, p := range problemStrings(err) {
		all := true
		for _, s := range parts {
			all = all && strings.Contains(p, s)
		}
		if all {
			return true
		}
	}
	return false
}

// reloadWithin runs e's Reload and fails t if it has not returned within d.
func reloadWithin(t *testing.T, e *env, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- e.srv.Reload() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("Reload still running after %s", d)
		return nil
	}
}

// TestShutdownStuckReload: a reload that never ends (held here by taking
// its lock, as a read on a hung network mount would) does not hold
// shutdown: Run returns within drain_timeout plus the few seconds it
// waits for a reload.
func TestShutdownStuckReload(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true, drainTimeout: "2s"})
	c, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	e.srv.reloadMu.Lock()
	defer e.srv.reloadMu.Unlock()
	hup := make(chan error, 1)
	go func() { hup <- e.srv.Reload() }() // a SIGHUP's reload, queued behind the stuck one

	start := time.Now()
	e.stop()
	var took time.Duration
	select {
	case <-e.done:
		took = time.Since(start)
		close(e.done)
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20s of cancel while a reload was stuck")
	}
	// reloadStopTimeout, then the drain: the live session is cut at 2s.
	if limit := reloadStopTimeout + 2*time.Second + 2*time.Second; took > limit {
		t.Errorf("Run returned %s after cancel, want at most %s", took, limit)
	}
	if took < reloadStopTimeout {
		t.Errorf("Run returned after %s, before the %s it gives a running reload", took, reloadStopTimeout)
	}
	t.Logf("Run returned %s after cancel with a reload stuck", took.Round(time.Millisecond))
	if len(e.logs.FilterMessageSnippet("a reload is still running").All()) == 0 {
		t.Error("no log line says shutdown went on without the stuck reload")
	}
	e.srv.reloadMu.Unlock()
	if err := <-hup; err != nil {
		t.Logf("the queued reload, after shutdown: %v", err)
	}
	e.srv.reloadMu.Lock() // for the deferred Unlock
}

// TestStaleCRLWarns: a CRL past its nextUpdate loads, with a warning naming
// the file and the date at each load, and its nextUpdate in
// spacegate_crl_next_update_timestamp_seconds; revocations in it still
// count.
func TestStaleCRLWarns(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	revoked := e.pki.Client(t, "revoked", testenv.ForRoutes("db"))
	next := time.Now().Add(-time.Hour).Truncate(time.Second)
	stale, err := e.pki.CA.CRL([]x509.RevocationListEntry{{SerialNumber: revoked.Cert.SerialNumber, RevocationTime: next.Add(-2 * time.Hour)}},
		big.NewInt(1000), next.Add(-24*time.Hour), next)
	if err != nil {
		t.Fatal(err)
	}
	renameWrite(t, e.pki.CRLFile, stale)
	e.awaitGeneration(t, 2)

	warned := e.logs.FilterMessageSnippet("CRL is past its nextUpdate").All()
	if len(warned) == 0 {
		t.Fatal("no warning logged for a CRL past its nextUpdate")
	}
	fields := warned[len(warned)-1].ContextMap()
	if fields["file"] != e.pki.CRLFile {
		t.Errorf("warning names file %v, want %s", fields["file"], e.pki.CRLFile)
	}
	if got, ok := fields["next_update"].(time.Time); !ok || !got.Equal(next) {
		t.Errorf("warning gives next_update %v, want %s", fields["next_update"], next)
	}
	metric := fmt.Sprintf(`spacegate_crl_next_update_timestamp_seconds{issuer="CN=spacegate test CA",route="db"} %s`, strconv.FormatFloat(float64(next.Unix()), 'g', -1, 64))
	if m := e.get(t, "/metrics"); !strings.Contains(m, metric) {
		t.Errorf("/metrics lacks %s", metric)
	}
	_, err = pgConnect(t, e.pgConnString(revoked))
	requireRefusal(t, nil, err, "28000", "was revoked")

	// Each reload warns again.
	n := len(e.logs.FilterMessageSnippet("CRL is past its nextUpdate").All())
	if err := e.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := len(e.logs.FilterMessageSnippet("CRL is past its nextUpdate").All()); got != n+1 {
		t.Errorf("%d warnings after one more reload, want %d", got, n+1)
	}
}
