package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/internal/testenv"
)

func (e *env) get(t *testing.T, path string) string {
	t.Helper()
	// No keep-alive: an idle pooled connection would outlive the test and
	// trip goleak.
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(e.admin + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
	}
	return string(b)
}

func TestAdminEndpoints(t *testing.T) {
	e := newEnv(t, envOptions{})
	if got := e.get(t, "/healthz"); got != "ok\n" {
		t.Errorf("/healthz = %q", got)
	}
	if got := e.get(t, "/readyz"); got != "ready\n" {
		t.Errorf("/readyz = %q", got)
	}
	c, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())

	var st admin.Status
	if err := json.Unmarshal([]byte(e.get(t, "/v1/status")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Generation != 1 || !st.Ready || len(st.Routes) != 2 {
		t.Fatalf("status = %+v", st)
	}
	db := st.Routes[0]
	if db.Name != "db" || db.Rules != 2 || len(db.RuleIDs) != 2 || db.Active != 1 || !db.Enabled {
		t.Errorf("route db = %+v", db)
	}
	if len(st.Connections) != 1 || st.Connections[0].CertSerial != e.client.Serial || st.Connections[0].User != "postgres" {
		t.Errorf("connections = %+v", st.Connections)
	}
	// The server certificate and the CA of each route, and the client
	// admitted on db: what the expiry metrics export, nearest first.
	kinds := map[string]int{}
	for i, x := range st.CertExpiries {
		kinds[x.Kind+" "+x.Route]++
		if x.Subject == "" || x.NotAfter.IsZero() || i > 0 && x.NotAfter.Before(st.CertExpiries[i-1].NotAfter) {
			t.Errorf("cert_expiries[%d] = %+v, after %+v", i, x, st.CertExpiries[max(i-1, 0)])
		}
	}
	if len(kinds) != 5 || kinds["server db"] != 1 || kinds["ca cache"] != 1 || kinds["client db"] != 1 {
		t.Errorf("cert_expiries = %+v, want server and ca of db and cache, client of db", st.CertExpiries)
	}
	m := e.get(t, "/metrics")
	for _, want := range []string{
		`spacegate_connections_active{route="db"} 1`,
		`spacegate_connections_established_total{route="db"} 1`,
		`spacegate_ip_rules{route="cache"} 2`,
		`spacegate_config_generation 1`,
		`spacegate_cert_expiry_timestamp_seconds{kind="server"`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestMaxConnections(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true, maxConnections: 1})
	c, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	_, err = pgConnect(t, e.pgConnString(e.client))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
		t.Fatalf("second connection: %v, want FATAL 53300", err)
	}
}

// TestDrain: on shutdown the gate stops accepting at once, lets a live
// session finish, and returns when it has.
func TestDrain(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true, drainTimeout: "20s"})
	c, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	e.stop()
	waitFor(t, 5*time.Second, "the listener to close", func() bool {
		nc, err := net.DialTimeout("tcp", e.pgAddr, time.Second)
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	if got := mustQueryInt(t, c, "select 1"); got != 1 {
		t.Fatal("live session broken by drain")
	}
	// That Run does not return can only be watched for a while: 200ms
	// of a drain with nothing left to do but wait for the session.
	select {
	case <-e.done:
		t.Fatal("Run returned while a session was live")
	case <-time.After(200 * time.Millisecond):
	}
	c.Close(context.Background())
	select {
	case err := <-e.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		close(e.done)
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the last session ended")
	}
}

func TestDrainTimeoutClosesSessions(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true, drainTimeout: "300ms"})
	c, err := pgConnect(t, e.pgConnString(e.client))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	start := time.Now()
	if err := e.shutdown(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("shutdown took %s with a 300ms drain timeout", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx); err == nil {
		t.Fatal("session still alive after the drain timeout")
	}
}

// TestConnectionLimits: the gate's, a route's and a source address's caps
// each refuse with 53300 naming the limit, and free their slot on close.
func TestConnectionLimits(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true, rules: []string{"127.0.0.0/24"},
		limits: "  max_connections_per_source: 2\n", routes: `  - name: db
    protocol: postgres
    listen: ` + testenv.FreeAddr(t) + `
    upstream: {{pg}}
    ip_rules_file: rules.yaml
    max_connections: 3
`})
	e.pgAddr = e.srv.Snapshot().Routes[0].Listen
	var open []*pgx.Conn
	defer func() {
		for _, c := range open {
			c.Close(context.Background())
		}
	}()
	connect := func(from string) error {
		c, err := pgConnect(t, e.pgConnString(e.client), withDialFrom(from))
		if err == nil {
			open = append(open, c)
		}
		return err
	}
	for _, from := range []string{"127.0.0.1", "127.0.0.1", "127.0.0.2"} {
		if err := connect(from); err != nil {
			t.Fatalf("from %s: %v", from, err)
		}
	}
	for _, tc := range []struct{ from, want string }{
		{"127.0.0.1", "too many connections for route db (limit 3)"}, // route limit first
		{"127.0.0.3", "too many connections for route db (limit 3)"},
	} {
		err := connect(tc.from)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "53300" || !strings.Contains(pgErr.Message, tc.want) {
			t.Fatalf("from %s: %v, want 53300 %q", tc.from, err, tc.want)
		}
	}
	open[2].Close(context.Background()) // 127.0.0.2 leaves: a route slot frees
	open = open[:2]
	waitFor(t, 5*time.Second, "the slot to free", func() bool { return e.srv.Status().Routes[0].Active == 2 })
	err := connect("127.0.0.1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || !strings.Contains(pgErr.Message, "too many connections from 127.0.0.1 (limit 2 per source address)") {
		t.Fatalf("third from 127.0.0.1: %v", err)
	}
	if err := connect("127.0.0.3"); err != nil {
		t.Fatalf("from 127.0.0.3 once a slot freed: %v", err)
	}
	m := e.get(t, "/metrics")
	for _, want := range []string{`reason="route_connection_limit",route="db"} 2`, `reason="source_connection_limit",route="db"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestUpstreamHealth: the gate probes each upstream and reports, in status
// and metrics, whether it is reachable, without naming its address.
func TestUpstreamHealth(t *testing.T) {
	pg := testenv.StartPostgresT(t, testenv.PostgresOptions{})
	e := newEnv(t, envOptions{noRedis: true, pgUpstream: pg.Addr})
	up := func() *admin.UpstreamHealth { return e.srv.Status().Routes[0].Upstream }
	waitFor(t, 5*time.Second, "the first probe", func() bool { return up() != nil })
	if h := up(); !h.Reachable || h.Error != "" {
		t.Fatalf("upstream health = %+v", h)
	}
	if !strings.Contains(e.get(t, "/metrics"), `spacegate_upstream_up{route="db"} 1`) {
		t.Error("upstream_up not 1")
	}
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	// The probe runs every 10s; the test asks now rather than wait.
	e.srv.probe(context.Background(), e.srv.Snapshot().Routes[0], time.Second)
	h := up()
	if h.Reachable || h.Error != "connection refused" || strings.Contains(h.Error, pg.Addr) {
		t.Fatalf("upstream health after stop = %+v", h)
	}
	if !strings.Contains(e.get(t, "/metrics"), `spacegate_upstream_up{route="db"} 0`) {
		t.Error("upstream_up not 0")
	}
	// A client refused for it is counted in status as in metrics.
	if c, err := pgConnect(t, e.pgConnString(e.client)); err == nil {
		c.Close(context.Background())
		t.Fatal("connected through the gate to a stopped upstream")
	}
	waitFor(t, 5*time.Second, "upstream_unavailable_total 1 in status", func() bool { return e.srv.Status().Routes[0].UpstreamUnavailable == 1 })
}
