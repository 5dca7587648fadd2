package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spacegate/spacegate/internal/testenv"
	"github.com/spacegate/spacegate/tlsconf"
)

// The ways users change files.

// renameWrite writes data as editors and CLIs do: a temp file, then rename.
func renameWrite(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp~"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// inPlaceWrite truncates and rewrites the file itself.
func inPlaceWrite(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// k8sVolume lays out files the way a Kubernetes ConfigMap or Secret volume
// does (name -> ..data/name, ..data -> ..TIMESTAMP) and swaps versions the
// way the kubelet does.
type k8sVolume struct {
	dir string
	n   int
}

func (v *k8sVolume) update(t testing.TB, files map[string][]byte) {
	t.Helper()
	v.n++
	ts := fmt.Sprintf("..2026_11_22_00_00_%02d.%d", v.n, v.n)
	if err := os.Mkdir(filepath.Join(v.dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(v.dir, ts, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	old, _ := os.Readlink(filepath.Join(v.dir, "..data"))
	if err := os.Symlink(ts, filepath.Join(v.dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(v.dir, "..data_tmp"), filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		os.RemoveAll(filepath.Join(v.dir, old))
	}
}

func rulesYAML(cidrs ...string) []byte {
	var b strings.Builder
	b.WriteString("rules:\n")
	for i, c := range cidrs {
		fmt.Fprintf(&b, "  - id: 00000000-0000-4000-8000-%012d\n    cidr: %s\n    description: rule %d\n", i+1, c, i+1)
	}
	if len(cidrs) == 0 {
		return []byte("rules: []\n")
	}
	return []byte(b.String())
}

func (e *env) generation() uint64 { return e.srv.Snapshot().Generation }

func (e *env) awaitGeneration(t testing.TB, g uint64) {
	t.Helper()
	waitFor(t, 5*time.Second, fmt.Sprintf("generation %d", g), func() bool { return e.generation() >= g })
}

// requireCut asserts that the session was cut with FATAL 57P01 naming want.
func requireCut(t *testing.T, c *pgx.Conn, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var err error
	// The FATAL may arrive while idle; pgx reports it on the next query.
	waitFor(t, 5*time.Second, "the session to be cut", func() bool {
		_, err = c.Exec(ctx, "select 1")
		return err != nil
	})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || !strings.Contains(pgErr.Message, want) {
		t.Fatalf("want FATAL 57P01 %q, got %v", want, err)
	}
}

func requireAlive(t *testing.T, c *pgx.Conn) {
	t.Helper()
	if got := mustQueryInt(t, c, "select 7"); got != 7 {
		t.Fatal("session broken")
	}
}

func TestReloadRulesCutsRemovedSource(t *testing.T) {
	forEachSplice(t, testReloadRulesCutsRemovedSource)
}

func testReloadRulesCutsRemovedSource(t *testing.T, goroutines bool) {
	e := newEnv(t, envOptions{noRedis: true, rules: []string{"127.0.0.1/32", "127.0.0.2/32"}, goroutineSplice: goroutines})
	stay, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer stay.Close(context.Background())
	gone, err := pgConnect(t, e.pgConnString(e.client), withDialFrom("127.0.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	defer gone.Close(context.Background())

	renameWrite(t, filepath.Join(e.dir, "rules.yaml"), rulesYAML("127.0.0.1/32"))
	e.awaitGeneration(t, 2)
	requireCut(t, gone, "terminating connection: source address 127.0.0.2 is no longer allowed for route db")
	requireAlive(t, stay)
	if ids := e.srv.Status().Routes[0].RuleIDs; len(ids) != 1 {
		t.Errorf("rule ids in force = %v", ids)
	}
	if _, err := pgConnect(t, e.pgConnString(e.client), withDialFrom("127.0.0.2")); err == nil {
		t.Error("new connection from the removed source accepted")
	}
	waitFor(t, 5*time.Second, "the cut's audit line", func() bool { return e.logs.FilterMessage("connection cut").Len() == 1 })
	if !strings.Contains(e.get(t, "/metrics"), `spacegate_connections_cut_total{reason="ip_not_allowed",route="db"} 1`) {
		t.Error("cut not counted")
	}
}

// TestReloadBrokenFileKeepsOld: a broken file never replaces a good
// configuration; fixing it recovers without a restart.
func TestReloadBrokenFileKeepsOld(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	c, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	rules := filepath.Join(e.dir, "rules.yaml")
	otherKey := e.pki.Client(t, "other")
	otherKeyPEM, _ := os.ReadFile(otherKey.KeyFile)
	certPEM, _ := os.ReadFile(e.pki.ServerCertFile)
	// What is in force is named by its content. Generations would not do:
	// restoring a file after a case makes the file watcher reload the
	// good content again, which counts, at a moment the test does not set.
	inForce := func() string { return e.srv.Status().Fingerprint }
	goodFP := inForce()
	for _, tc := range []struct {
		name    string
		path    string
		data    []byte
		problem string
	}{
		{"bad YAML", rules, []byte("rules: [\n"), "rules.yaml"},
		{"bad CIDR", rules, rulesYAML("127.0.0.1/33"), "rules.yaml:3"},
		{"key that does not match its cert", e.pki.ServerKeyFile, otherKeyPEM, "does not match"},
		{"half-written PEM", e.pki.ServerCertFile, certPEM[:len(certPEM)/2], "server.crt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig, _ := os.ReadFile(tc.path)
			renameWrite(t, tc.path, tc.data)
			err := e.srv.Reload()
			if err == nil || !strings.Contains(fmt.Sprint(problemStrings(err)), tc.problem) {
				t.Fatalf("Reload = %v, want a problem naming %q", err, tc.problem)
			}
			if fp := inForce(); fp != goodFP {
				t.Fatalf("fingerprint %s in force after a broken file, want the good %s", fp, goodFP)
			}
			requireAlive(t, c)
			fresh, err := pgConnect(t, e.pgConnString(e.client))
			if err != nil {
				t.Fatalf("new connection under the old configuration: %v", err)
			}
			fresh.Close(context.Background())
			renameWrite(t, tc.path, orig)
		})
	}
	if !strings.Contains(e.get(t, "/metrics"), `spacegate_reloads_total{result="error"}`) {
		t.Error("failed reloads not counted")
	}
	// Fixed: the next change loads.
	renameWrite(t, rules, rulesYAML("127.0.0.1/32", "::1/128", "127.0.0.9/32"))
	waitFor(t, 5*time.Second, "the fixed rules in force", func() bool { return inForce() != goodFP })
	if n := e.srv.Status().Routes[0].Rules; n != 3 {
		t.Errorf("%d rules in force after the fix, want 3", n)
	}
	requireAlive(t, c)
}

// TestReloadKillSwitch: enabled: false cuts live sessions within a second
// and refuses new ones; enabled: true brings the route back.
func TestReloadKillSwitch(t *testing.T) {
	e := newEnv(t, envOptions{})
	c, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	rc := e.redisClient(e.client, nil)
	defer rc.Close()
	ctx := context.Background()
	if err := rc.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(e.cfgPath)
	disabled := strings.ReplaceAll(string(cfg), "    ip_rules_file: rules.yaml\n", "    ip_rules_file: rules.yaml\n    enabled: false\n")
	start := time.Now()
	inPlaceWrite(t, e.cfgPath, []byte(disabled))
	e.awaitGeneration(t, 2)
	requireCut(t, c, "route db was disabled by its operator")
	waitFor(t, time.Second, "the redis session to be cut", func() bool { return len(e.srv.Status().Connections) == 0 })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("kill switch took %s", d)
	}
	_, err = pgConnect(t, e.pgConnString(e.client))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P03" {
		t.Fatalf("new connection while disabled: %v, want FATAL 57P03", err)
	}
	inPlaceWrite(t, e.cfgPath, cfg)
	e.awaitGeneration(t, 3)
	c2, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatalf("after enabled again: %v", err)
	}
	c2.Close(context.Background())
}

// TestReloadRevocationAndCARotation: a CRL update cuts the revoked
// certificate's sessions; a CA bundle holding two CAs accepts both, and
// taking the old one out cuts the sessions whose certificates chain to it.
func TestReloadRevocationAndCARotation(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	newCA, err := tlsconf.NewCA("spacegate test CA 2", tlsconf.KeyECDSAP256, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	oldPEM, _ := os.ReadFile(e.pki.CAFile)
	renameWrite(t, e.pki.CAFile, append(append([]byte{}, oldPEM...), newCA.CertPEM...))
	e.awaitGeneration(t, 2)

	iss, err := newCA.Issue(tlsconf.IssueRequest{CommonName: "new", URIs: e.client.Cert.URIs})
	if err != nil {
		t.Fatal(err)
	}
	newCert := &testenv.ClientCert{CertFile: filepath.Join(e.dir, "new.crt"), KeyFile: filepath.Join(e.dir, "new.key")}
	writeFile(t, newCert.CertFile, string(iss.CertPEM))
	os.WriteFile(newCert.KeyFile, iss.KeyPEM, 0o600)
	onNew, err := pgConnect(t, e.pgConnString(newCert))
	if err != nil {
		t.Fatalf("certificate of the new CA during rotation: %v", err)
	}
	defer onNew.Close(context.Background())
	onOld, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer onOld.Close(context.Background())
	revoked := e.pki.Client(t, "revoked", testenv.ForRoutes("db"))
	onRevoked, err := pgConnect(t, e.pgConnString(revoked))
	if err != nil {
		t.Fatal(err)
	}
	defer onRevoked.Close(context.Background())

	e.pki.Revoke(t, revoked)
	e.awaitGeneration(t, 3)
	requireCut(t, onRevoked, "terminating connection: client certificate (serial "+revoked.Serial+") was revoked")
	requireAlive(t, onOld)

	// The last step of a rotation: the CRL is signed by the new CA, then
	// the old CA leaves the bundle. (A CRL that no CA of the bundle signed
	// is refused, so the order matters; `spacegate ca` follows it.)
	now := time.Now()
	crl, err := newCA.CRL(nil, big.NewInt(100), now, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	renameWrite(t, e.pki.CRLFile, crl)
	e.awaitGeneration(t, 4)
	requireAlive(t, onOld)
	renameWrite(t, e.pki.CAFile, newCA.CertPEM)
	e.awaitGeneration(t, 5)
	requireCut(t, onOld, "is not signed by the space CA")
	requireAlive(t, onNew)
}

// TestReloadServerCertRotation: new handshakes get the new certificate;
// sessions opened before continue.
func TestReloadServerCertRotation(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	c, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	certFile, keyFile := serverCert(t, e.pki, "rotated", "localhost")
	certPEM, _ := os.ReadFile(certFile)
	keyPEM, _ := os.ReadFile(keyFile)
	// Key first, then cert: between the two writes the pair does not match,
	// and that reload must fail without harm.
	renameWrite(t, e.pki.ServerKeyFile, keyPEM)
	renameWrite(t, e.pki.ServerCertFile, certPEM)
	waitFor(t, 5*time.Second, "the new server certificate", func() bool {
		return e.srv.Snapshot().Routes[0].Material.Certificate.Leaf.Subject.CommonName == "localhost" &&
			e.srv.Snapshot().Routes[0].Material.Certificate.Leaf.SerialNumber.Cmp(mustLeafSerial(t, certPEM)) == 0
	})
	requireAlive(t, c)
	var served string
	c2, err := pgConnect(t, e.pgConnString(e.client), func(cc *pgx.ConnConfig) {
		cc.TLSConfig.VerifyConnection = func(cs tls.ConnectionState) error {
			served = tlsconf.FormatSerial(cs.PeerCertificates[0].SerialNumber)
			return nil
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	c2.Close(context.Background())
	if served != tlsconf.FormatSerial(mustLeafSerial(t, certPEM)) {
		t.Fatalf("new handshake served serial %s", served)
	}
}

// TestReloadKubernetesSymlinkSwap: a rules file in a ConfigMap-style volume
// is reloaded when the kubelet swaps ..data.
func TestReloadKubernetesSymlinkSwap(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true, rules: []string{"127.0.0.1/32", "127.0.0.2/32"}})
	vol := &k8sVolume{dir: filepath.Join(e.dir, "configmap")}
	os.Mkdir(vol.dir, 0o755)
	vol.update(t, map[string][]byte{"rules.yaml": rulesYAML("127.0.0.1/32", "127.0.0.2/32")})
	cfg, _ := os.ReadFile(e.cfgPath)
	renameWrite(t, e.cfgPath, []byte(strings.ReplaceAll(string(cfg), "ip_rules_file: rules.yaml", "ip_rules_file: configmap/rules.yaml")))
	e.awaitGeneration(t, 2)
	gone, err := pgConnect(t, e.pgConnString(e.client), withDialFrom("127.0.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	defer gone.Close(context.Background())
	vol.update(t, map[string][]byte{"rules.yaml": rulesYAML("127.0.0.1/32")})
	e.awaitGeneration(t, 3)
	requireCut(t, gone, "source address 127.0.0.2 is no longer allowed")
}

// TestReloadRoutesAddedAndRemoved: a new route's listener opens; a removed
// route's listener closes while its live session drains.
func TestReloadRoutesAddedAndRemoved(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	c, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	cfg, _ := os.ReadFile(e.cfgPath)
	newAddr := testenv.FreeAddr(t)
	oldAddr := e.pgAddr
	moved := strings.Replace(string(cfg), oldAddr, newAddr, 1)
	renameWrite(t, e.cfgPath, []byte(moved))
	e.awaitGeneration(t, 2)
	e.pgAddr = newAddr
	c2, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatalf("route on its new listener: %v", err)
	}
	c2.Close(context.Background())
	e.pgAddr = oldAddr
	if c3, err := pgConnect(t, e.pgConnString(e.client)); err == nil {
		c3.Close(context.Background())
		t.Fatal("old listener still accepts")
	}
	requireAlive(t, c) // drains rather than being cut
}

// TestCertExpiresDuringSession: a session ends at its certificate's NotAfter.
func TestCertExpiresDuringSession(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	short := e.pki.Client(t, "short", testenv.ForRoutes("db"), func(r *tlsconf.IssueRequest) {
		// x509 times have one-second resolution: NotAfter is whole seconds.
		r.NotAfter = time.Now().Add(2 * time.Second).Truncate(time.Second)
	})
	c, err := pgConnect(t, e.pgConnString(short))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	requireAlive(t, c)
	waitFor(t, 5*time.Second, "the expiry cut", func() bool { return e.logs.FilterMessage("connection cut").Len() == 1 })
	if time.Now().Before(short.Cert.NotAfter) {
		t.Fatal("cut before NotAfter")
	}
	requireCut(t, c, "client certificate expired on")
}

// TestReloadUnderLoad: pgbench through the gate while the rules file and the
// server certificate are rewritten 200 times: no failed transaction on the
// connections that stay allowed, and the one from a removed CIDR is cut.
func TestReloadUnderLoad(t *testing.T) {
	testenv.Require(t, "pgbench")
	pg := sharedPostgres(t)
	if out, err := exec.Command("pgbench", "-i", "-s", "1", "-q", pg.ConnString()).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v: %s", err, out)
	}
	e := newEnv(t, envOptions{noRedis: true, rules: []string{"127.0.0.1/32", "127.0.0.3/32"}})
	gone, err := pgConnect(t, e.pgConnString(e.client), withDialFrom("127.0.0.3"))
	if err != nil {
		t.Fatal(err)
	}
	defer gone.Close(context.Background())
	certA, keyA := serverCert(t, e.pki, "a", "localhost")
	certB, keyB := serverCert(t, e.pki, "b", "localhost")
	pair := [2][2][]byte{}
	for i, f := range [][2]string{{certA, keyA}, {certB, keyB}} {
		pair[i][0], _ = os.ReadFile(f[0])
		pair[i][1], _ = os.ReadFile(f[1])
	}
	rules := filepath.Join(e.dir, "rules.yaml")

	bench := exec.Command("pgbench", "-S", "-c", "4", "-j", "2", "-T", "12", e.pgConnString(e.client))
	var out strings.Builder
	bench.Stdout, bench.Stderr = &out, &out
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 200 {
			p := pair[i%2]
			// The pair changes together as one rename each; a reload in
			// between sees a mismatched pair and keeps the old one.
			os.WriteFile(e.pki.ServerKeyFile+".tmp", p[1], 0o600)
			os.WriteFile(e.pki.ServerCertFile+".tmp", p[0], 0o644)
			os.Rename(e.pki.ServerKeyFile+".tmp", e.pki.ServerKeyFile)
			os.Rename(e.pki.ServerCertFile+".tmp", e.pki.ServerCertFile)
			os.WriteFile(rules+".tmp", rulesYAML("127.0.0.1/32", "127.0.0.3/32", fmt.Sprintf("10.%d.0.0/16", i)), 0o644)
			os.Rename(rules+".tmp", rules)
			// As SIGHUP does, on top of the reloads the file events start
			// (some of which see the key and cert halfway and keep the
			// old pair).
			e.srv.Reload()
			// Not a wait: the pace of the storm, so that its 200
			// reloads spread over pgbench's run.
			time.Sleep(20 * time.Millisecond)
		}
	}()
	wg.Wait()
	renameWrite(t, rules, rulesYAML("127.0.0.1/32"))
	if err := bench.Wait(); err != nil {
		t.Fatalf("pgbench: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "number of failed transactions: 0 ") {
		t.Fatalf("pgbench had failures during reloads:\n%s", out.String())
	}
	requireCut(t, gone, "source address 127.0.0.3 is no longer allowed")
	t.Logf("%d reloads during pgbench; %s", e.generation()-1, lastLine(out.String(), "tps"))
	if e.generation() < 200 {
		t.Errorf("only %d reloads happened", e.generation()-1)
	}
}

func lastLine(s, prefix string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// BenchmarkReloadLatency measures file change to effect: the rules file is
// renamed over, and the clock stops when the new generation is in force.
func BenchmarkReloadLatency(b *testing.B) {
	e := newEnv(b, envOptions{noRedis: true})
	rules := filepath.Join(e.dir, "rules.yaml")
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		g := e.generation()
		start := time.Now()
		renameWrite(b, rules, rulesYAML("127.0.0.1/32", fmt.Sprintf("10.%d.%d.0/24", i/256%256, i%256)))
		for e.generation() == g {
			time.Sleep(200 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms-median")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "ms-p99")
}
