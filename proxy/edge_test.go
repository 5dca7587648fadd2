package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/testenv"
)

// pgURL is a connection string to addr as host (SNI and certificate name),
// resolved to 127.0.0.1 with hostaddr as libpq users do.
func pgURL(pki *testenv.PKI, cert *testenv.ClientCert, host, addr, sslmode string, extra ...string) string {
	_, port, _ := net.SplitHostPort(addr)
	s := fmt.Sprintf("host=%s hostaddr=127.0.0.1 port=%s user=postgres dbname=postgres sslmode=%s sslrootcert=%s sslsni=1 connect_timeout=5",
		host, port, sslmode, pki.CAFile)
	if cert != nil {
		s += fmt.Sprintf(" sslcert=%s sslkey=%s", cert.CertFile, cert.KeyFile)
	}
	return s + " " + strings.Join(extra, " ")
}

// withLookup resolves every host name to 127.0.0.1 for pgx (which has no hostaddr).
func withLookup(c *pgx.ConnConfig) {
	c.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }
	delete(c.RuntimeParams, "hostaddr") // libpq's; pgx would send it to the server
}

func upstreamPort(t *testing.T, c *pgx.Conn) string {
	t.Helper()
	var port string
	if err := c.QueryRow(context.Background(), "show port").Scan(&port); err != nil {
		t.Fatal(err)
	}
	return port
}

// TestSNIRouting: two PostgreSQL upstreams behind one listen address, told
// apart by the TLS server name, with classic and direct TLS.
func TestSNIRouting(t *testing.T) {
	testenv.Require(t, "psql")
	pgA := sharedPostgres(t)
	pgB := testenv.StartPostgresT(t, testenv.PostgresOptions{})
	pki := testenv.NewPKI(t)
	certA, keyA := serverCert(t, pki, "a", "db-a.test")
	certB, keyB := serverCert(t, pki, "b", "db-b.test", "*.b.test")
	addr := testenv.FreeAddr(t)
	newEnv(t, envOptions{pki: pki, routes: fmt.Sprintf(`  - name: a
    protocol: postgres
    listen: %[1]s
    server_names: [db-a.test]
    upstream: %[2]s
    ip_rules_file: rules.yaml
    tls: {cert_file: %[3]s, key_file: %[4]s}
  - name: b
    protocol: postgres
    listen: %[1]s
    server_names: [db-b.test, "*.b.test"]
    upstream: %[5]s
    ip_rules_file: rules.yaml
    tls: {cert_file: %[6]s, key_file: %[7]s}
`, addr, pgA.Addr, certA, keyA, pgB.Addr, certB, keyB)})
	client := pki.Client(t, "both", testenv.ForRoutes("a", "b"))
	_, portA, _ := net.SplitHostPort(pgA.Addr)
	_, portB, _ := net.SplitHostPort(pgB.Addr)

	for _, tc := range []struct{ host, want string }{{"db-a.test", portA}, {"db-b.test", portB}, {"eu.b.test", portB}} {
		out, err := exec.Command("psql", pgURL(pki, client, tc.host, addr, "verify-full"), "-XAtc", "show port").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != tc.want {
			t.Fatalf("psql to %s: %v: %q, want upstream port %s", tc.host, err, out, tc.want)
		}
	}
	c, err := pgConnect(t, pgURL(pki, client, "db-b.test", addr, "verify-full", "sslnegotiation=direct"), withLookup)
	if err != nil {
		t.Fatalf("pgx direct TLS to db-b.test: %v", err)
	}
	if got := upstreamPort(t, c); got != portB {
		t.Errorf("direct TLS to db-b.test reached port %s, want %s", got, portB)
	}
	c.Close(context.Background())

	t.Run("unknown and missing server name", func(t *testing.T) {
		for host, want := range map[string]string{
			"nope.test": `no database is served under the name "nope.test" at this address; it serves: db-a.test, db-b.test, *.b.test`,
			"127.0.0.1": "no server name (SNI) was sent",
		} {
			_, err := pgConnect(t, pgURL(pki, client, host, addr, "verify-ca"), withLookup)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, want) {
				t.Errorf("host %s: got %v, want FATAL 28000 %q", host, err, want)
			}
		}
	})

	t.Run("psql Ctrl-C on a shared listener", func(t *testing.T) {
		_, out := psqlCtrlC(t, pgURL(pki, client, "db-b.test", addr, "verify-full"), 5*time.Second,
			func() bool { return sleepingOn(t, pgB) == 1 })
		if !strings.Contains(out, "canceling statement due to user request") {
			t.Fatalf("psql output: %s", out)
		}
	})
}

// TestSNIDefaultRoute: a ClientHello without a server name goes to the
// route marked default.
func TestSNIDefaultRoute(t *testing.T) {
	pg := sharedPostgres(t)
	addr := testenv.FreeAddr(t)
	e := newEnv(t, envOptions{routes: fmt.Sprintf(`  - name: a
    protocol: postgres
    listen: %[1]s
    server_names: [db-a.test]
    upstream: 127.0.0.1:1
    ip_rules_file: rules.yaml
  - name: b
    protocol: postgres
    listen: %[1]s
    default: true
    upstream: %[2]s
    ip_rules_file: rules.yaml
`, addr, pg.Addr)})
	client := e.pki.Client(t, "b", testenv.ForRoutes("b"))
	c, err := pgConnect(t, pgURL(e.pki, client, "127.0.0.1", addr, "verify-full"), withLookup)
	if err != nil {
		t.Fatalf("no SNI to the default route: %v", err)
	}
	c.Close(context.Background())
}

// TestIdentityPerRoute: a certificate issued for one route is refused on
// another, with a reason that says so, on PostgreSQL and Redis.
func TestIdentityPerRoute(t *testing.T) {
	e := newEnv(t, envOptions{})
	forDB := e.pki.Client(t, "fordb", testenv.ForRoutes("db"))
	forCache := e.pki.Client(t, "forcache", testenv.ForRoutes("cache"))
	plain := e.pki.Client(t, "plain")

	_, err := pgConnect(t, e.pgConnString(forCache))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "is issued for route cache, not for route db") {
		t.Fatalf("cache cert on db: %v", err)
	}
	_, err = pgConnect(t, e.pgConnString(plain))
	if !errors.As(err, &pgErr) || !strings.Contains(pgErr.Message, "is not allowed on route db (allowed: uri:spiffe://*/route/db/*)") {
		t.Fatalf("cert without route on db: %v", err)
	}
	c, err := pgConnect(t, e.pgConnString(forDB))
	if err != nil {
		t.Fatalf("db cert on db: %v", err)
	}
	c.Close(context.Background())

	rc := e.redisClient(forDB, nil)
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rc.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "is issued for route db, not for route cache") {
		t.Fatalf("db cert on cache: %v", err)
	}
	waitFor(t, 5*time.Second, "3 identity_not_allowed refusals logged", func() bool { return len(e.refusals("identity_not_allowed")) == 3 })
}

// TestPostgresUserFromCert binds the PostgreSQL user to the certificate's
// CN, or to what postgres_user_map maps it to.
func TestPostgresUserFromCert(t *testing.T) {
	e := newEnv(t, envOptions{routes: `  - name: db
    protocol: postgres
    listen: ` + testenv.FreeAddr(t) + `
    upstream: {{pg}}
    ip_rules_file: rules.yaml
    allowed_clients: ["*"]
    postgres_user_from_cert: true
    postgres_user_map: {app-1: postgres}
`})
	e.pgAddr = e.srv.Snapshot().Routes[0].Listen
	for _, tc := range []struct {
		cn   string
		want string // "" accepted
	}{
		{"postgres", ""},
		{"app-1", ""},
		{"mallory", `PostgreSQL user "postgres" does not match the client certificate (CN "mallory"`},
	} {
		c, err := pgConnect(t, e.pgConnString(e.pki.Client(t, tc.cn)))
		if tc.want == "" {
			if err != nil {
				t.Errorf("CN %s as postgres: %v", tc.cn, err)
			} else {
				c.Close(context.Background())
			}
			continue
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, tc.want) || pgErr.Hint != "connect as user=mallory" {
			t.Errorf("CN %s as postgres: %v (hint %q)", tc.cn, err, pgErr.Hint)
		}
	}
}

// dialWithProxyHeader dials from src (a loopback address) and sends h first.
func dialWithProxyHeader(src string, h *proxyproto.Header) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dialFrom(src)(ctx, network, addr)
		if err != nil || h == nil {
			return nc, err
		}
		if _, err := h.WriteTo(nc); err != nil {
			nc.Close()
			return nil, err
		}
		return nc, nil
	}
}

func proxyHeader(version byte, src string) *proxyproto.Header {
	return proxyproto.HeaderProxyFromAddrs(version,
		&net.TCPAddr{IP: net.ParseIP(src), Port: 40000}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5432})
}

// TestProxyProtocol: the source address of a trusted balancer's PROXY
// header is what the rules, the audit log and the refusals see; a header
// from anyone else is a protocol violation.
func TestProxyProtocol(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true, top: "proxy_protocol:\n  trusted_cidrs: [127.0.0.1/32]\n",
		rules: []string{"127.0.0.1/32", "203.0.113.7/32"}})
	local := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	for _, tc := range []struct {
		name   string
		from   string
		header *proxyproto.Header
		source string // audit source, accepted
		code   string // refused with
		msg    string
	}{
		{name: "trusted v1, allowed source", from: "127.0.0.1", header: proxyHeader(1, "203.0.113.7"), source: "203.0.113.7:40000"},
		{name: "trusted v2, allowed source", from: "127.0.0.1", header: proxyHeader(2, "203.0.113.7"), source: "203.0.113.7:40000"},
		{name: "trusted v2, source not in rules", from: "127.0.0.1", header: proxyHeader(2, "198.51.100.9"), code: "28000", msg: "source address 198.51.100.9 is not allowed for route db"},
		{name: "trusted v2 LOCAL (health check) keeps the peer", from: "127.0.0.1", header: local, source: "127.0.0.1:"},
		{name: "trusted, no header", from: "127.0.0.1", source: "127.0.0.1:"},
		{name: "untrusted v1", from: "127.0.0.2", header: proxyHeader(1, "203.0.113.7"), code: "08P01", msg: "PROXY protocol header from 127.0.0.2, which is not in proxy_protocol.trusted_cidrs"},
		{name: "untrusted v2", from: "127.0.0.2", header: proxyHeader(2, "203.0.113.7"), code: "08P01", msg: "PROXY protocol header from 127.0.0.2"},
		{name: "untrusted, no header", from: "127.0.0.2", code: "28000", msg: "source address 127.0.0.2 is not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.logs.FilterMessage("connection closed").Len()
			c, err := pgConnect(t, e.pgConnString(e.client), func(cc *pgx.ConnConfig) { cc.DialFunc = dialWithProxyHeader(tc.from, tc.header) })
			if tc.code != "" {
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != tc.code || !strings.Contains(pgErr.Message, tc.msg) {
					t.Fatalf("got %v, want FATAL %s %q", err, tc.code, tc.msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.Close(context.Background())
			waitFor(t, 5*time.Second, "the audit line", func() bool { return e.logs.FilterMessage("connection closed").Len() > before })
			line := e.logs.FilterMessage("connection closed").All()[before].ContextMap()
			if src, _ := line["source"].(string); !strings.HasPrefix(src, tc.source) {
				t.Errorf("audit source = %q, want %s...", src, tc.source)
			}
			if tc.header != nil && tc.header.Command.IsProxy() && line["peer"] == nil {
				t.Errorf("audit line lacks the balancer's address: %v", line)
			}
		})
	}
}

// TestUpstreamTLS: the gate talks TLS to a PostgreSQL with ssl=on (after an
// SSLRequest) and to a Redis tls-port, verifying them, and refuses clearly
// when the upstream cannot be verified or does not speak TLS.
func TestUpstreamTLS(t *testing.T) {
	pgTLS := testenv.StartPostgresT(t, testenv.PostgresOptions{SSL: true})
	rTLS, err := testenv.StartRedisTLS()
	if err != nil {
		if testenv.Strict() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	defer rTLS.Close()
	pki := testenv.NewPKI(t)
	route := func(name, proto, upstream, mode, ca, extra string) string {
		return fmt.Sprintf("  - name: %s\n    protocol: %s\n    listen: %s\n    upstream: %s\n    upstream_tls: %s\n    upstream_ca_file: %s\n    ip_rules_file: rules.yaml\n    allowed_clients: [\"*\"]\n%s",
			name, proto, testenv.FreeAddr(t), upstream, mode, ca, extra)
	}
	e := newEnv(t, envOptions{pki: pki, routes: route("pg-verified", "postgres", pgTLS.Addr, "verify-full", pgTLS.CertFile, "") +
		route("pg-wrong-ca", "postgres", pgTLS.Addr, "verify-full", pki.CAFile, "") +
		route("pg-plain", "postgres", "{{pg}}", "require", pgTLS.CertFile, "") +
		route("redis-verified", "redis", rTLS.TLSAddr, "verify-full", rTLS.CertFile, "    upstream_server_name: localhost\n")})
	snap := e.srv.Snapshot()
	connect := func(route string) (*pgx.Conn, error) {
		e.pgAddr = snap.Route(route).Listen
		return pgConnect(t, e.pgConnString(e.client))
	}

	c, err := connect("pg-verified")
	if err != nil {
		t.Fatalf("through verify-full upstream TLS: %v", err)
	}
	var ssl bool
	if err := c.QueryRow(context.Background(), "select ssl from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Errorf("upstream session encrypted = %v, %v", ssl, err)
	}
	c.Close(context.Background())

	for route, want := range map[string]string{
		"pg-wrong-ca": "the database behind route pg-wrong-ca cannot be reached right now",
		"pg-plain":    "the database behind route pg-plain does not accept TLS, and the route requires it (upstream_tls: require)",
	} {
		_, err := connect(route)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "08006" || !strings.Contains(pgErr.Message, want) {
			t.Errorf("%s: got %v, want FATAL 08006 %q", route, err, want)
		}
	}
	waitFor(t, 5*time.Second, "2 upstream_unavailable audit lines", func() bool { return len(e.refusals("upstream_unavailable")) == 2 })
	var logged []string
	for _, l := range e.refusals("upstream_unavailable") {
		logged = append(logged, fmt.Sprint(l.ContextMap()["error"]))
	}
	// The operator's log says why; the client's message does not leak it.
	if all := strings.Join(logged, "\n"); !strings.Contains(all, "certificate signed by unknown authority") || !strings.Contains(all, "answered SSLRequest with N") {
		t.Errorf("audit of upstream TLS failures: %s", all)
	}

	e.redisAdr = snap.Route("redis-verified").Listen
	rc := e.redisClient(e.client, nil)
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rc.Set(ctx, "k", "over TLS both ways", 0).Err(); err != nil {
		t.Fatalf("redis through upstream TLS: %v", err)
	}
	if got, _ := rc.Get(ctx, "k").Result(); got != "over TLS both ways" {
		t.Fatalf("GET = %q", got)
	}
}

// TestListenersIPv6: a route on [::1] and one on the dual-stack [::], where
// an IPv4 client's mapped address matches an IPv4 rule.
func TestListenersIPv6(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	v6 := ln.Addr().String()
	ln.Close()
	// A port free on every address, not only on 127.0.0.1: the wildcard
	// bind fails if any local address holds it (a busy machine's
	// outgoing connections use ports from the same range).
	ln, err = net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	dual := ln.Addr().String()
	ln.Close()
	e := newEnv(t, envOptions{routes: fmt.Sprintf(`  - name: v6
    protocol: postgres
    listen: "%s"
    upstream: {{pg}}
    ip_rules_file: rules.yaml
  - name: dual
    protocol: postgres
    listen: "%s"
    upstream: {{pg}}
    ip_rules_file: rules.yaml
`, v6, dual)})
	for _, tc := range []struct{ route, host, source string }{
		{"v6", "::1", "[::1]:"},
		{"dual", "127.0.0.1", "127.0.0.1:"},
		{"dual", "::1", "[::1]:"},
	} {
		client := e.pki.Client(t, tc.route+tc.host, testenv.ForRoutes(tc.route))
		_, port, _ := net.SplitHostPort(e.srv.Snapshot().Route(tc.route).Listen)
		before := e.logs.FilterMessage("connection closed").Len()
		c, err := pgConnect(t, fmt.Sprintf("host=%s port=%s user=postgres sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s",
			tc.host, port, e.pki.CAFile, client.CertFile, client.KeyFile))
		if err != nil {
			t.Fatalf("%s via %s: %v", tc.route, tc.host, err)
		}
		c.Close(context.Background())
		waitFor(t, 5*time.Second, "audit", func() bool { return e.logs.FilterMessage("connection closed").Len() > before })
		src := e.logs.FilterMessage("connection closed").All()[before].ContextMap()["source"].(string)
		if !strings.HasPrefix(src, tc.source) {
			t.Errorf("%s via %s: audit source %q, want %s...", tc.route, tc.host, src, tc.source)
		}
	}
}

// TestListenFailureNamesRoute: a listener that cannot bind stops start-up
// with an error naming the route.
func TestListenFailureNamesRoute(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	rules := dir + "/rules.yaml"
	writeFile(t, rules, "rules: []\n")
	cfg, err := config.Parse([]byte(fmt.Sprintf(`tls: {cert_file: %s, key_file: %s, client_ca_file: %s}
routes:
  - name: sushi-db
    protocol: postgres
    listen: %s
    upstream: 127.0.0.1:1
    ip_rules_file: %s
`, pki.ServerCertFile, pki.ServerKeyFile, pki.CAFile, busy.Addr(), rules)), dir+"/c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(Options{Config: cfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), `route "sushi-db": cannot listen on `+busy.Addr().String()) {
		t.Fatalf("Run = %v", err)
	}
}
