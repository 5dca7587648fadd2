package proxy

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/testenv"
	"github.com/spacegate/spacegate/tlsconf"
)

// The upstream servers are shared by every test of the package: starting a
// PostgreSQL takes a second or two. Tests that break an upstream start their
// own.
var shared sharedServers

type sharedServers struct {
	pg       *testenv.Postgres
	pgErr    error
	redis    *testenv.Redis
	redisErr error
}

func TestMain(m *testing.M) {
	// A missing binary shows up as the start error, which the tests that
	// need the server report when they skip or fail.
	shared.pg, shared.pgErr = testenv.StartPostgres(testenv.PostgresOptions{})
	shared.redis, shared.redisErr = testenv.StartRedis()
	code := m.Run()
	if shared.pg != nil {
		shared.pg.Close()
	}
	if shared.redis != nil {
		shared.redis.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// sharedPostgres returns the package's PostgreSQL, or skips (or, under
// SPACEGATE_REQUIRE_INTEGRATION=1, fails) the test if there is none.
func sharedPostgres(t testing.TB) *testenv.Postgres {
	t.Helper()
	if shared.pg == nil {
		if testenv.Strict() {
			t.Fatalf("PostgreSQL: %v", shared.pgErr)
		}
		t.Skipf("PostgreSQL: %v", shared.pgErr)
	}
	return shared.pg
}

// addr returns the shared upstream's address, if the YAML asks for it.
func (sh *sharedServers) addr(t testing.TB, which string) string {
	switch which {
	case "pg":
		if sh.pg == nil {
			return "127.0.0.1:1"
		}
		return sh.pg.Addr
	default:
		if sh.redis == nil {
			return "127.0.0.1:1"
		}
		return sh.redis.Addr
	}
}

func sharedRedis(t testing.TB) *testenv.Redis {
	t.Helper()
	if shared.redis == nil {
		if testenv.Strict() {
			t.Fatalf("Redis: %v", shared.redisErr)
		}
		t.Skipf("Redis: %v", shared.redisErr)
	}
	return shared.redis
}

// envOptions change the gate's config from the defaults of newEnv.
type envOptions struct {
	pgUpstream       string   // default: the shared PostgreSQL
	redisUpstream    string   // default: the shared Redis ("" with noRedis)
	noRedis          bool     // no Redis route
	noPostgres       bool     // no PostgreSQL route
	rules            []string // default: 127.0.0.1/32 and ::1/128
	handshakeTimeout string
	drainTimeout     string
	maxConnections   int
	extraRoute       string // YAML appended under routes:
	// routes, if set, replaces the default routes: YAML list items under
	// routes:, where {{pg}} and {{redis}} stand for the shared upstreams
	// and {{dir}} for the env's directory (rules.yaml is there).
	routes string
	top    string       // more top-level YAML (proxy_protocol:, pki:)
	limits string       // more keys under limits:, indented two spaces
	pki    *testenv.PKI // default: a new one
	// goroutineSplice: copy with two goroutines per session, not the
	// event loops (Options.GoroutineSplice).
	goroutineSplice bool
	// testHook, if set, is the server's test hook (Server.hook).
	testHook func(*conn, hookPoint)
	admin    string      // more keys under admin:, indented two spaces
	probe    probeTiming // Server.probeTiming; zero: the defaults
}

// env is a running gate in front of real upstreams, with its PKI.
type env struct {
	t               testing.TB
	dir             string
	pki             *testenv.PKI
	client          *testenv.ClientCert // a good client certificate
	srv             *Server
	pgAddr          string // the gate's PostgreSQL listener
	redisAdr        string // the gate's Redis listener
	admin           string // base URL of the admin endpoint
	logs            *observer.ObservedLogs
	stop            context.CancelFunc
	goroutineSplice bool
	testHook        func(*conn, hookPoint)
	probe           probeTiming
	done            chan error
	cfgPath         string
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), pki: o.pki, goroutineSplice: o.goroutineSplice, testHook: o.testHook, probe: o.probe}
	if e.pki == nil {
		e.pki = testenv.NewPKI(t)
	}
	e.client = e.pki.Client(t, "good", testenv.ForRoutes("db", "cache"))
	if !o.noPostgres && o.pgUpstream == "" {
		o.pgUpstream = sharedPostgres(t).Addr
	}
	if !o.noRedis && o.redisUpstream == "" {
		o.redisUpstream = sharedRedis(t).Addr
	}
	if o.rules == nil {
		o.rules = []string{"127.0.0.1/32", "::1/128"}
	}
	if o.handshakeTimeout == "" {
		o.handshakeTimeout = "5s"
	}
	if o.drainTimeout == "" {
		o.drainTimeout = "5s"
	}
	if o.maxConnections == 0 {
		o.maxConnections = 100
	}
	e.writeRules("rules.yaml", o.rules...)
	var routes strings.Builder
	if o.routes != "" {
		o.noPostgres, o.noRedis = true, true
		routes.WriteString(strings.NewReplacer("{{pg}}", shared.addr(t, "pg"), "{{redis}}", shared.addr(t, "redis"), "{{dir}}", e.dir).Replace(o.routes))
	}
	if !o.noPostgres {
		e.pgAddr = testenv.FreeAddr(t)
		fmt.Fprintf(&routes, "  - name: db\n    protocol: postgres\n    listen: %s\n    upstream: %s\n    ip_rules_file: rules.yaml\n", e.pgAddr, o.pgUpstream)
	}
	if !o.noRedis {
		e.redisAdr = testenv.FreeAddr(t)
		fmt.Fprintf(&routes, "  - name: cache\n    protocol: redis\n    listen: %s\n    upstream: %s\n    ip_rules_file: rules.yaml\n", e.redisAdr, o.redisUpstream)
	}
	routes.WriteString(o.extraRoute)
	cfg := fmt.Sprintf(o.top+`
admin:
  listen: %s
%stls:
  cert_file: %s
  key_file: %s
  client_ca_file: %s
  crl_file: %s
limits:
  max_connections: %d
  handshake_timeout: %s
  upstream_connect_timeout: 2s
  drain_timeout: %s
%sroutes:
%s`, testenv.FreeAddr(t), o.admin, e.pki.ServerCertFile, e.pki.ServerKeyFile, e.pki.CAFile, e.pki.CRLFile,
		o.maxConnections, o.handshakeTimeout, o.drainTimeout, o.limits, routes.String())
	e.cfgPath = filepath.Join(e.dir, "spacegate.yaml")
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	e.start()
	return e
}

func (e *env) writeRules(name string, cidrs ...string) {
	e.t.Helper()
	var b strings.Builder
	b.WriteString("rules:\n")
	for i, c := range cidrs {
		fmt.Fprintf(&b, "  - id: 00000000-0000-4000-8000-%012d\n    cidr: %s\n    description: test rule %d\n", i+1, c, i+1)
	}
	if len(cidrs) == 0 {
		b.Reset()
		b.WriteString("rules: []\n")
	}
	if err := os.WriteFile(filepath.Join(e.dir, name), []byte(b.String()), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// start loads the config file and runs the gate until the test ends.
func (e *env) start() {
	t := e.t
	t.Helper()
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	core, logs := observer.New(zap.DebugLevel)
	e.logs = logs
	srv, err := NewServer(Options{Config: cfg, Logger: zap.New(core), GoroutineSplice: e.goroutineSplice})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	srv.testHook = e.testHook
	srv.probeTiming = e.probe
	e.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	e.stop = cancel
	e.done = make(chan error, 1)
	go func() { e.done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-e.done:
		t.Fatalf("Run ended before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gate not ready after 10s")
	}
	e.admin = "http://" + srv.AdminAddr().String()
	t.Cleanup(func() { e.shutdown(10 * time.Second) })
}

// shutdown stops the gate and waits up to d for Run to return.
func (e *env) shutdown(d time.Duration) error {
	e.stop()
	select {
	case err, ok := <-e.done:
		if ok {
			close(e.done)
		}
		return err
	case <-time.After(d):
		e.t.Errorf("gate did not stop within %s", d)
		return nil
	}
}

// waitFor is testenv.WaitFor: it polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, d, what, cond)
}

// refusals returns the audit lines of refused connections with the given reason.
func (e *env) refusals(reason string) []observer.LoggedEntry {
	return e.logs.FilterMessage("connection refused").FilterField(zap.String("reason", reason)).All()
}

// dialFrom dials addr from a chosen loopback source address.
func dialFrom(src string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return d.DialContext
}

func withDialFrom(src string) func(*pgx.ConnConfig) {
	return func(c *pgx.ConnConfig) { c.DialFunc = dialFrom(src) }
}

// serverCert issues a server certificate for dnsNames and 127.0.0.1 from
// the PKI's CA and returns its files.
func serverCert(t testing.TB, pki *testenv.PKI, name string, dnsNames ...string) (certFile, keyFile string) {
	t.Helper()
	iss, err := pki.CA.Issue(tlsconf.IssueRequest{CommonName: dnsNames[0], DNSNames: dnsNames, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(pki.Dir, name+".crt"), filepath.Join(pki.Dir, name+".key")
	if err := os.WriteFile(certFile, iss.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, iss.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func mustLeafSerial(t testing.TB, certPEM []byte) *big.Int {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("no PEM")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// forEachSplice runs f with the engine's event loops and with its portable
// implementation, a goroutine per direction (Options.GoroutineSplice), which
// systems other than Linux run.
func forEachSplice(t *testing.T, f func(t *testing.T, goroutines bool)) {
	for _, g := range []bool{false, true} {
		name := "loop"
		if g {
			name = "goroutines"
		}
		t.Run(name, func(t *testing.T) { f(t, g) })
	}
}
