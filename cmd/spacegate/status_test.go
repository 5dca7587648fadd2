package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spacegate/spacegate/allowlist"
	"github.com/spacegate/spacegate/internal/testenv"
)

// runStatusCmd runs `spacegate status` with args and returns its output
// and error. (The root command gets it from root.go; this runs it alone.)
func runStatusCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newStatusCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

// TestStatusLiveGate asks a real gate, with one live PostgreSQL session
// through it, for its status as a table and as JSON.
func TestStatusLiveGate(t *testing.T) {
	g := startGateBinary(t)
	dir, config, gate := g.dir, g.config, g.addrs

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, gateConnString(dir, gate.pg))
	if err != nil {
		t.Fatalf("connecting through the gate: %v", err)
	}
	defer conn.Close(context.Background())

	rules, err := allowlist.Load(filepath.Join(dir, "rules", qsPostgresRoute+".yaml"))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("table", func(t *testing.T) {
		out, err := runStatusCmd(t, "--config", config)
		if err != nil {
			t.Fatalf("status: %v\n%s", err, out)
		}
		want := []string{
			"gate http://" + gate.admin, "ready yes",
			qsPostgresRoute, qsRedisRoute, gate.pg, gate.redis,
			"Live connections (1):", "postgres",
			"Nearest certificate expiries:", "server", "ca", "client",
			"spiffe://", // the client identity, from /v1/status
		}
		for _, r := range rules.Rules {
			want = append(want, r.ID)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("status table lacks %q:\n%s", w, out)
			}
		}
	})

	t.Run("json", func(t *testing.T) {
		out, err := runStatusCmd(t, "--admin", gate.admin, "--json") // no scheme: http is assumed
		if err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		var rep statusReport
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rep); err != nil {
			t.Fatalf("status --json printed what does not decode: %v\n%s", err, out)
		}
		if !rep.Ready || rep.Generation != 1 {
			t.Errorf("ready=%v generation=%d, want true, 1", rep.Ready, rep.Generation)
		}
		if len(rep.Routes) != 2 || rep.Routes[0].Name != qsPostgresRoute || rep.Routes[0].Active != 1 || rep.Routes[0].Rules != len(rules.Rules) {
			t.Errorf("routes = %+v, want %s first with 1 live connection and %d rules", rep.Routes, qsPostgresRoute, len(rules.Rules))
		}
		if len(rep.Connections) != 1 || rep.Connections[0].User != "postgres" || rep.Connections[0].CertSerial == "" {
			t.Errorf("connections = %+v, want one of user postgres with a cert serial", rep.Connections)
		}
		kinds := map[string]int{}
		for i, e := range rep.CertExpiries {
			kinds[e.Kind]++
			if i > 0 && e.NotAfter.Before(rep.CertExpiries[i-1].NotAfter) {
				t.Errorf("cert_expiries not nearest first: %v before %v", rep.CertExpiries[i-1], e)
			}
		}
		// Each route serves the one server certificate and trusts the one
		// CA; the client was seen on the PostgreSQL route only.
		if kinds["server"] != 2 || kinds["ca"] != 2 || kinds["client"] != 1 {
			t.Errorf("cert_expiries by kind = %v, want server 2, ca 2, client 1: %+v", kinds, rep.CertExpiries)
		}
	})
}

// gateConnString is a libpq connection string through the quickstart
// gate in dir listening on addr, with the quickstart client bundle.
func gateConnString(dir, addr string) string {
	client := filepath.Join(dir, "client")
	_, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("host=localhost port=%s user=postgres dbname=postgres sslmode=verify-full sslcert=%s sslkey=%s sslrootcert=%s connect_timeout=10",
		port, filepath.Join(client, "postgresql.crt"), filepath.Join(client, "postgresql.key"), filepath.Join(client, "root.crt"))
}

func TestStatusErrors(t *testing.T) {
	dir := t.TempDir()
	noAdmin := filepath.Join(dir, "noadmin.yaml")
	writeFile(t, filepath.Join(dir, "rules.yaml"), "rules: []\n")
	writeFile(t, noAdmin, `tls:
  cert_file: server.crt
  key_file: server.key
  client_ca_file: ca.crt
routes:
  - name: db
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: 127.0.0.1:5432
    ip_rules_file: rules.yaml
`)
	refused := testenv.FreeAddr(t) // nothing listens there
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	defer failing.Close()

	tests := []struct {
		name     string
		args     []string
		want     string // in the error
		wantHint string // in the hint, "" for none
	}{
		{"no config", []string{"--config", filepath.Join(dir, "missing.yaml")}, "missing.yaml", "--admin URL"},
		{"no admin.listen", []string{"--config", noAdmin}, "has no admin.listen", "set admin.listen"},
		{"gate down", []string{"--admin", "http://" + refused}, "gate not reachable", "spacegate serve"},
		{"admin error", []string{"--admin", failing.URL}, "500 Internal Server Error", "spacegate serve"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runStatusCmd(t, tt.args...)
			if err == nil {
				t.Fatal("status succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			var he hintError
			switch {
			case tt.wantHint == "":
			case !errors.As(err, &he):
				t.Errorf("error %q has no hint, want one containing %q", err, tt.wantHint)
			case !strings.Contains(he.hint, tt.wantHint):
				t.Errorf("hint %q does not contain %q", he.hint, tt.wantHint)
			}
		})
	}
}

// serveStatus serves doc as /v1/status and fails the test on any other
// path: the status command reads the gate's JSON only.
func serveStatus(t *testing.T, doc any) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/status" {
			t.Errorf("status asked for %s; it reads /v1/status only", r.URL.Path)
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(doc)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestStatusFromJSON: the table shows what /v1/status says: upstream
// health or failed dials, certificate expiries of every kind, nearest
// first.
func TestStatusFromJSON(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	doc := map[string]any{
		"generation": 3, "loaded_at": now, "ready": true,
		"routes": []map[string]any{
			{"name": "sushi-db", "protocol": "postgres", "listen": "0.0.0.0:5432", "enabled": true, "rules": 1,
				"max_ip_rules": 60, "rule_ids": []string{"r1"}, "active": 0, "server_cert_not_after": now.Add(400 * 24 * time.Hour),
				"upstream_unavailable_total": 3},
		},
		"connections": []map[string]any{},
		"cert_expiries": []map[string]any{
			{"kind": "ca", "route": "sushi-db", "subject": "CN=space CA", "not_after": now.Add(900 * 24 * time.Hour)},
			{"kind": "client", "route": "sushi-db", "subject": "spiffe://spacegate/route/sushi-db/client/etl", "not_after": now.Add(5 * 24 * time.Hour)},
			{"kind": "server", "route": "sushi-db", "subject": "CN=gate", "not_after": now.Add(400 * 24 * time.Hour)},
		},
	}
	srv := serveStatus(t, doc)
	rep, err := queryStatus(context.Background(), gateAdmin{base: srv.URL, client: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := writeStatus(&out, rep, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"generation 3", "ready yes", "3 failed dial(s) since start", "sushi-db  r1", "Live connections: none",
		"5d", "expiring", "spiffe://spacegate/route/sushi-db/client/etl", "CN=gate", "CN=space CA", "900d",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status table lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "note:") {
		t.Errorf("status table has a note, want none:\n%s", out.String())
	}
	if len(rep.CertExpiries) != 3 || rep.CertExpiries[0].Kind != "client" || rep.CertExpiries[2].Kind != "ca" {
		t.Errorf("cert_expiries = %+v, want client, server, ca", rep.CertExpiries)
	}
}

// TestStatusOlderGate serves the /v1/status of a gate older than
// cert_expiries, with the upstream health it reports: the table shows the
// expiries the rest of the document gives and says what is missing.
func TestStatusOlderGate(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	doc := map[string]any{
		"generation": 7, "loaded_at": now, "ready": false,
		"routes": []map[string]any{
			{"name": "sushi-db", "protocol": "postgres", "listen": "0.0.0.0:5432", "enabled": true, "rules": 0,
				"max_ip_rules": 60, "rule_ids": []string{}, "active": 1, "server_cert_not_after": now.Add(10 * 24 * time.Hour),
				"upstream": map[string]any{"reachable": false, "checked_at": now.Add(-3 * time.Second), "error": "connection refused"}},
			{"name": "ramen-db", "protocol": "postgres", "listen": "0.0.0.0:5433", "enabled": false, "rules": 1,
				"max_ip_rules": 60, "rule_ids": []string{"r1"}, "active": 0, "server_cert_not_after": now.Add(400 * 24 * time.Hour)},
		},
		"connections": []map[string]any{
			{"id": "c1", "route": "sushi-db", "source": "203.0.113.7:50000", "phase": "splice", "since": now,
				"cert_subject": "CN=alice", "cert_serial": "1f2e", "cert_not_after": now.Add(-time.Hour), "user": "app", "database": "sushi"},
		},
	}
	srv := serveStatus(t, doc)
	rep, err := queryStatus(context.Background(), gateAdmin{base: srv.URL, client: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := writeStatus(&out, rep, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"generation 7", "ready no",
		"DOWN: connection refused (checked 3s ago)", "NO (disabled)",
		"sushi-db  (none: nobody is allowed)", "ramen-db  r1",
		"203.0.113.7:50000", "CN=alice",
		"-60m", "EXPIRED", "10d", "expiring", "400d",
		"note: " + srv.URL + "/v1/status lists no cert_expiries",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status table lacks %q:\n%s", want, out.String())
		}
	}
	if len(rep.CertExpiries) != 3 || rep.CertExpiries[0].Kind != "client" || rep.CertExpiries[2].Route != "ramen-db" {
		t.Errorf("cert_expiries = %+v, want the client's, then sushi-db's, then ramen-db's server certificate", rep.CertExpiries)
	}
}

func TestUntilText(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{90 * time.Second, "90s"},
		{3 * time.Minute, "3m"},
		{5 * time.Hour, "5h"},
		{75 * 24 * time.Hour, "75d"},
		{-49 * time.Hour, "-2d"},
	}
	for _, tt := range tests {
		if got := untilText(tt.d); got != tt.want {
			t.Errorf("untilText(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestExpiryState(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		notAfter time.Time
		want     string
	}{
		{now.Add(-time.Second), "EXPIRED"},
		{now, "EXPIRED"},
		{now.Add(74 * 24 * time.Hour), "expiring"},
		{now.Add(76 * 24 * time.Hour), "ok"},
	}
	for _, tt := range tests {
		if got := expiryState(tt.notAfter, now); got != tt.want {
			t.Errorf("expiryState(%v) = %q, want %q", tt.notAfter, got, tt.want)
		}
	}
}
