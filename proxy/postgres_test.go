package proxy

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/spacegate/spacegate/internal/testenv"
)

// pgConnString is a libpq/pgx connection string to the gate's PostgreSQL
// route with cert as the client certificate (none if nil).
func (e *env) pgConnString(cert *testenv.ClientCert, extra ...string) string {
	host, port, _ := net.SplitHostPort(e.pgAddr)
	s := fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=5", host, port, e.pki.CAFile)
	if cert != nil {
		s += fmt.Sprintf(" sslcert=%s sslkey=%s", cert.CertFile, cert.KeyFile)
	}
	for _, x := range extra {
		s += " " + x
	}
	return s
}

func pgConnect(t *testing.T, connString string, tweak ...func(*pgx.ConnConfig)) (*pgx.Conn, error) {
	t.Helper()
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		t.Fatalf("ParseConfig(%q): %v", connString, err)
	}
	for _, f := range tweak {
		f(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// requireRefusal checks that a connection attempt (c, err) was refused with
// FATAL code and a message that contains each of contains.
func requireRefusal(t *testing.T, c *pgx.Conn, err error, code string, contains ...string) {
	t.Helper()
	if err == nil {
		c.Close(context.Background())
		t.Fatal("connection was accepted")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("want a PostgreSQL error, got %v", err)
	}
	if pgErr.Severity != "FATAL" || pgErr.Code != code {
		t.Errorf("got %s %s, want FATAL %s: %s", pgErr.Severity, pgErr.Code, code, pgErr.Message)
	}
	for _, s := range contains {
		if !strings.Contains(pgErr.Message, s) {
			t.Errorf("message %q does not contain %q", pgErr.Message, s)
		}
	}
}

func mustQueryInt(t *testing.T, c *pgx.Conn, sql string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int
	if err := c.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestPostgresThroughGate(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"classic SSLRequest", nil},
		{"direct TLS with ALPN", []string{"sslnegotiation=direct"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := pgConnect(t, e.pgConnString(e.client, tc.extra...))
			if err != nil {
				t.Fatalf("connect through the gate: %v", err)
			}
			defer c.Close(context.Background())
			if got := mustQueryInt(t, c, "select 6*7"); got != 42 {
				t.Fatalf("select 6*7 = %d", got)
			}
			// The upstream sees the gate, but the session is the client's own.
			if got := mustQueryInt(t, c, "select count(*) from pg_stat_activity where usename = 'postgres' and backend_type = 'client backend'"); got < 1 {
				t.Fatalf("no client backend upstream")
			}
		})
	}
	st := e.srv.Status()
	if st.Generation != 1 || len(st.Routes) != 1 || st.Routes[0].Rules != 2 {
		t.Fatalf("status = %+v", st)
	}
	closed := e.logs.FilterMessage("connection closed").All()
	if len(closed) < 2 {
		waitFor(t, 5*time.Second, "audit lines of closed connections", func() bool {
			return len(e.logs.FilterMessage("connection closed").All()) >= 2
		})
		closed = e.logs.FilterMessage("connection closed").All()
	}
	f := closed[0].ContextMap()
	for _, k := range []string{"id", "route", "source", "cert_serial", "cert_subject", "pg_user", "pg_database", "bytes_up", "bytes_down", "duration", "ip_rule"} {
		if _, ok := f[k]; !ok {
			t.Errorf("audit line lacks %q: %v", k, f)
		}
	}
	if f["cert_serial"] != e.client.Serial {
		t.Errorf("audit cert_serial = %v, want %s", f["cert_serial"], e.client.Serial)
	}
}

func TestPsqlAndPgbenchThroughGate(t *testing.T) {
	testenv.Require(t, "psql", "pgbench")
	e := newEnv(t, envOptions{noRedis: true})
	out, err := exec.Command("psql", e.pgConnString(e.client), "-XAtc", "select 'through the gate'").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "through the gate" {
		t.Fatalf("psql: %v: %s", err, out)
	}

	pg := sharedPostgres(t)
	if out, err := exec.Command("pgbench", "-i", "-s", "1", "-q", pg.ConnString()).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v: %s", err, out)
	}
	out, err = exec.Command("pgbench", "-S", "-T", "3", "-c", "4", "-j", "2", e.pgConnString(e.client)).CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench -S through the gate: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "number of failed transactions: 0 ") {
		t.Fatalf("pgbench reports failed transactions:\n%s", out)
	}
	var processed int
	for _, line := range strings.Split(string(out), "\n") {
		if _, err := fmt.Sscanf(line, "number of transactions actually processed: %d", &processed); err == nil {
			break
		}
	}
	if processed < 100 {
		t.Fatalf("pgbench processed %d transactions in 3s:\n%s", processed, out)
	}
	t.Logf("pgbench -S through the gate: %d transactions in 3s", processed)
}

// TestPostgresRefusals asserts what a client sees for each refusal: the
// SQLSTATE and a sentence naming the reason, plus the metric label.
func TestPostgresRefusals(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	expired := e.pki.Client(t, "expired", testenv.Expired())
	notYet := e.pki.Client(t, "notyet", testenv.NotYetValid())
	foreign := e.pki.ForeignClient(t, "foreign")
	serverOnly := e.pki.Client(t, "serveronly", testenv.NoClientAuth())
	revoked := e.pki.Client(t, "revoked")
	e.pki.Revoke(t, revoked)
	// The CRL is read at start-up (live reload is a later change): restart.
	e.shutdown(10 * time.Second)
	e.start()

	for _, tc := range []struct {
		name     string
		cert     *testenv.ClientCert
		extra    []string
		from     string
		code     string
		contains []string
		reason   string
	}{
		{name: "no client certificate", code: "28000", reason: "cert_missing",
			contains: []string{"no client certificate"}},
		{name: "expired certificate", cert: expired, code: "28000", reason: "cert_expired",
			contains: []string{"expired on " + expired.Cert.NotAfter.UTC().Format(time.RFC3339), expired.Serial}},
		{name: "not yet valid certificate", cert: notYet, code: "28000", reason: "cert_not_yet_valid",
			contains: []string{"not valid until", notYet.Serial}},
		{name: "certificate of another CA", cert: foreign, code: "28000", reason: "cert_untrusted",
			contains: []string{"not signed by the space CA"}},
		{name: "certificate without clientAuth", cert: serverOnly, code: "28000", reason: "cert_usage",
			contains: []string{"client authentication"}},
		{name: "revoked certificate", cert: revoked, code: "28000", reason: "cert_revoked",
			contains: []string{"revoked", revoked.Serial}},
		{name: "source address not in the rules", cert: e.client, from: "127.0.0.2", code: "28000", reason: "ip_not_allowed",
			contains: []string{"source address 127.0.0.2 is not allowed for route db"}},
		{name: "plaintext", cert: e.client, extra: []string{"sslmode=disable"}, code: "28000", reason: "tls_required",
			contains: []string{"requires TLS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tweaks []func(*pgx.ConnConfig)
			if tc.from != "" {
				tweaks = append(tweaks, withDialFrom(tc.from))
			}
			before := len(e.refusals(tc.reason))
			c, err := pgConnect(t, e.pgConnString(tc.cert, tc.extra...), tweaks...)
			requireRefusal(t, c, err, tc.code, tc.contains...)
			waitFor(t, 5*time.Second, "audit line with reason "+tc.reason, func() bool { return len(e.refusals(tc.reason)) > before })
			line := e.refusals(tc.reason)[before].ContextMap()
			if want := map[bool]string{true: "negotiate", false: "check"}[tc.reason == "tls_required"]; line["phase"] != want {
				t.Errorf("audit phase = %v, want %s", line["phase"], want)
			}
		})
	}
	metrics := e.get(t, "/metrics")
	for _, want := range []string{
		`spacegate_connections_refused_total{reason="cert_expired",route="db"} 1`,
		`spacegate_connections_refused_total{reason="ip_not_allowed",route="db"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// rawStartup opens a TCP connection to the gate and returns it.
func (e *env) rawConn(t *testing.T) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", e.pgAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	return nc
}

func startupPacket(code uint32, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	binary.BigEndian.PutUint32(b[0:4], uint32(8+len(body)))
	binary.BigEndian.PutUint32(b[4:8], code)
	return append(b, body...)
}

// readPgError reads one backend message from r and requires an ErrorResponse.
func readPgError(t *testing.T, r io.Reader) *pgproto3.ErrorResponse {
	t.Helper()
	fe := pgproto3.NewFrontend(r, io.Discard)
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("reading the gate's answer: %v", err)
	}
	er, ok := msg.(*pgproto3.ErrorResponse)
	if !ok {
		t.Fatalf("got %T, want ErrorResponse", msg)
	}
	return er
}

func TestPostgresStartupPackets(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})

	t.Run("GSSENCRequest first is answered N, then SSLRequest S", func(t *testing.T) {
		nc := e.rawConn(t)
		nc.Write(startupPacket(codeGSSENCRequest, nil))
		b := make([]byte, 1)
		if _, err := io.ReadFull(nc, b); err != nil || b[0] != 'N' {
			t.Fatalf("GSSENCRequest answer %q, %v; want N", b, err)
		}
		nc.Write(startupPacket(codeSSLRequest, nil))
		if _, err := io.ReadFull(nc, b); err != nil || b[0] != 'S' {
			t.Fatalf("SSLRequest answer %q, %v; want S", b, err)
		}
		tc := tls.Client(nc, &tls.Config{RootCAs: e.pki.ServerPool(), ServerName: "localhost", Certificates: []tls.Certificate{e.client.TLS}})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS after GSSENC refusal: %v", err)
		}
		sm := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "postgres"}}
		buf, _ := sm.Encode(nil)
		tc.Write(buf)
		fe := pgproto3.NewFrontend(tc, io.Discard)
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := msg.(*pgproto3.AuthenticationOk); !ok {
			t.Fatalf("first upstream message %T, want AuthenticationOk (trust)", msg)
		}
	})

	t.Run("plaintext buffered after SSLRequest", func(t *testing.T) {
		nc := e.rawConn(t)
		sm := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "postgres"}}
		buf, _ := sm.Encode(nil)
		// One write: the StartupMessage rides behind the SSLRequest, as a
		// man-in-the-middle would inject it (CVE-2021-23222).
		nc.Write(append(startupPacket(codeSSLRequest, nil), buf...))
		er := readPgError(t, nc)
		if er.Code != "08P01" || !strings.Contains(er.Message, "unencrypted data after SSL request") {
			t.Fatalf("got %s %q", er.Code, er.Message)
		}
	})

	for _, tc := range []struct {
		name  string
		bytes []byte
		code  string
		msg   string
	}{
		{"garbage bytes", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "08P01", "invalid length of startup packet"},
		{"oversized packet", startupPacket(196608, bytes.Repeat([]byte{'a'}, 20000)), "08P01", "invalid length of startup packet"},
		{"protocol 4.0 in plaintext", startupPacket(4<<16, nil), "0A000", "unsupported frontend protocol 4.0: server supports 3.0 to 3.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc := e.rawConn(t)
			nc.Write(tc.bytes)
			er := readPgError(t, nc)
			if er.Severity != "FATAL" || er.Code != tc.code || !strings.Contains(er.Message, tc.msg) {
				t.Fatalf("got %s %s %q, want FATAL %s containing %q", er.Severity, er.Code, er.Message, tc.code, tc.msg)
			}
		})
	}

	t.Run("client that sends nothing is closed at the handshake timeout", func(t *testing.T) {
		e := newEnv(t, envOptions{noRedis: true, handshakeTimeout: "300ms"})
		nc := e.rawConn(t)
		start := time.Now()
		_, err := nc.Read(make([]byte, 1))
		if !errors.Is(err, io.EOF) {
			t.Fatalf("read: %v, want EOF", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("closed after %s", d)
		}
	})
}

func TestPostgresUpstreamDown(t *testing.T) {
	pg := testenv.StartPostgresT(t, testenv.PostgresOptions{})
	e := newEnv(t, envOptions{noRedis: true, pgUpstream: pg.Addr})
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	_, err := pgConnect(t, e.pgConnString(e.client))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08006" || !strings.Contains(pgErr.Message, "route db") {
		t.Fatalf("got %v, want FATAL 08006 naming route db", err)
	}
	if strings.Contains(pgErr.Message, pg.Addr) {
		t.Errorf("client message leaks the upstream address: %q", pgErr.Message)
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatalf("after the upstream came back: %v", err)
	}
	c.Close(context.Background())
}

// TestPostgresCancel cancels a running pg_sleep in every shape a client may
// send a CancelRequest: psql's plaintext one, and pgx's inside TLS after an
// SSLRequest or after direct TLS.
func TestPostgresCancel(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	t.Run("psql Ctrl-C (plaintext cancel)", func(t *testing.T) {
		testenv.Require(t, "psql")
		d, out := psqlCtrlC(t, e.pgConnString(e.client), 5*time.Second, func() bool {
			return e.srv.Status().Routes[0].Active == 1 && sleeping(t) == 1
		})
		if d > 2*time.Second {
			t.Errorf("cancel took %s", d)
		}
		if !strings.Contains(out, "canceling statement due to user request") {
			t.Fatalf("psql output: %s", out)
		}
	})
	for _, extra := range [][]string{nil, {"sslnegotiation=direct"}} {
		t.Run(fmt.Sprintf("pgx cancel inside TLS %v", extra), func(t *testing.T) {
			// Cancel at once and wait for the server's answer, so that the
			// query fails with PostgreSQL's own 57014 only if the
			// CancelRequest reached it through the gate.
			c, err := pgConnect(t, e.pgConnString(e.client, extra...), func(cc *pgx.ConnConfig) {
				cc.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
					return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 10 * time.Second}
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err = c.Exec(ctx, "select pg_sleep(30)")
			var pgErr *pgconn.PgError
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("cancel took %s (err %v)", d, err)
			}
			if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
				t.Fatalf("got %v, want 57014 query_canceled", err)
			}
		})
	}
	waitFor(t, 5*time.Second, "audit lines of 1 plaintext and 2 TLS cancels", func() bool {
		cancels := e.logs.FilterMessage("cancel request")
		return cancels.FilterField(zap.String("transport", "plaintext")).Len() == 1 &&
			cancels.FilterField(zap.String("transport", "tls")).Len() == 2
	})
}

// sleeping counts the backends running pg_sleep, asked directly upstream.
func sleeping(t *testing.T) int { return sleepingOn(t, sharedPostgres(t)) }

// sleepingOn counts the backends of pg running pg_sleep.
func sleepingOn(t *testing.T, pg *testenv.Postgres) int {
	c, err := pgConnect(t, pg.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	return mustQueryInt(t, c, "select count(*) from pg_stat_activity where query like 'select pg_sleep%' and state = 'active'")
}

// TestPostgresCopyIntegrity moves 50 MB out of and into PostgreSQL through
// the gate and compares digests with what the server holds.
func TestPostgresCopyIntegrity(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	direct, err := pgConnect(t, sharedPostgres(t).ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	gated, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer gated.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// 50 MB in: rows of varied length, digest computed on both ends.
	const rows = 400_000
	var in bytes.Buffer
	for i := range rows {
		fmt.Fprintf(&in, "%d\t%s\n", i, strings.Repeat(string(rune('a'+i%26)), 60+i%100))
	}
	sumIn := md5.Sum(in.Bytes())
	if _, err := direct.Exec(ctx, "drop table if exists copytest; create table copytest (id int primary key, v text)"); err != nil {
		t.Fatal(err)
	}
	tag, err := gated.PgConn().CopyFrom(ctx, bytes.NewReader(in.Bytes()), "copy copytest from stdin")
	if err != nil || tag.RowsAffected() != rows {
		t.Fatalf("COPY in through the gate: %v, %d rows", err, tag.RowsAffected())
	}
	var out bytes.Buffer
	if _, err := direct.PgConn().CopyTo(ctx, &out, "copy (select * from copytest order by id) to stdout"); err != nil {
		t.Fatal(err)
	}
	if got := md5.Sum(out.Bytes()); got != sumIn {
		t.Fatalf("COPY in: md5 upstream %x, sent %x (%d vs %d bytes)", got, sumIn, out.Len(), in.Len())
	}

	// 50 MB out through the gate, compared with the same COPY done directly.
	out.Reset()
	if _, err := gated.PgConn().CopyTo(ctx, &out, "copy (select * from copytest order by id) to stdout"); err != nil {
		t.Fatalf("COPY out through the gate: %v", err)
	}
	if got := md5.Sum(out.Bytes()); got != sumIn {
		t.Fatalf("COPY out: md5 through gate %s, want %s", hex.EncodeToString(got[:]), hex.EncodeToString(sumIn[:]))
	}
	t.Logf("COPY in and out: %d bytes each way, md5 %x", in.Len(), sumIn)
}
