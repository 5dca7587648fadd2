package testenv

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// queryString runs sql, which must return one row of one column, on a new
// connection described by connString.
func queryString(ctx context.Context, connString, sql string) (string, error) {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var got string
	err = conn.QueryRow(ctx, sql).Scan(&got)
	return got, err
}

func mustQuery(t *testing.T, connString, sql, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	got, err := queryString(ctx, connString, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if got != want {
		t.Fatalf("%s = %q, want %q", sql, got, want)
	}
}

func TestPostgresStopStart(t *testing.T) {
	t.Parallel()
	p := StartPostgresT(t, PostgresOptions{})
	if p.Host != "127.0.0.1" || p.User != "postgres" || p.Database != "postgres" || p.Port == 5432 {
		t.Fatalf("server = %s@%s:%d/%s, want postgres@127.0.0.1:(not 5432)/postgres", p.User, p.Host, p.Port, p.Database)
	}
	mustQuery(t, p.ConnString(), "select 1::text", "1")

	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := queryString(ctx, p.ConnString(), "select 1::text"); err == nil {
		t.Fatal("query after Stop succeeded, want a connection error")
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	port := p.Port
	if err := p.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if p.Port != port {
		t.Fatalf("port after Start = %d, want %d", p.Port, port)
	}
	mustQuery(t, p.ConnString(), "select 1::text", "1")
}

func TestPostgresPsql(t *testing.T) {
	t.Parallel()
	Require(t, "psql")
	p := StartPostgresT(t, PostgresOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-X", "-A", "-t", "-w", "-d", p.ConnString(), "-c", "select 42")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "42" {
		t.Fatalf("psql -c 'select 42' printed %q, want \"42\"", got)
	}
}

func TestPostgresOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts PostgresOptions
		// conn returns the connection string to query with.
		conn  func(p *Postgres) string
		query string
		want  string
	}{
		{
			name:  "plain",
			opts:  PostgresOptions{},
			conn:  (*Postgres).ConnString,
			query: "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()",
			want:  "false",
		},
		{
			name: "ssl verify-full",
			opts: PostgresOptions{SSL: true},
			conn: func(p *Postgres) string {
				return strings.Replace(p.ConnString(), "sslmode=disable", "sslmode=verify-full sslrootcert="+p.CertFile, 1)
			},
			query: "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()",
			want:  "true",
		},
		{
			name:  "conf overrides defaults",
			opts:  PostgresOptions{Conf: []string{"max_connections = 42", "work_mem = '7MB'"}},
			conn:  (*Postgres).ConnString,
			query: "select current_setting('max_connections') || ' ' || current_setting('work_mem')",
			want:  "42 7MB",
		},
		{
			name:  "defaults",
			opts:  PostgresOptions{},
			conn:  (*Postgres).ConnString,
			query: "select current_setting('max_connections') || ' ' || current_setting('fsync') || ' ' || current_setting('listen_addresses')",
			want:  "200 off 127.0.0.1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := StartPostgresT(t, tt.opts)
			if tt.opts.SSL == (p.CertFile == "") {
				t.Fatalf("CertFile = %q with SSL %v", p.CertFile, tt.opts.SSL)
			}
			mustQuery(t, tt.conn(p), tt.query, tt.want)
		})
	}
}

func TestPostgresExec(t *testing.T) {
	t.Parallel()
	p := StartPostgresT(t, PostgresOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := p.Exec(ctx, "create table t (n int); insert into t values (1), (2)"); err != nil {
		t.Fatalf("Exec: %v", err)
	}
	mustQuery(t, p.ConnString(), "select count(*)::text from t", "2")
	if err := p.Exec(ctx, "select * from no_such_table"); err == nil {
		t.Fatal("Exec of a query on a missing table succeeded, want an error")
	}
}

func TestPostgresClose(t *testing.T) {
	t.Parallel()
	Require(t, "initdb", "postgres")
	p, err := StartPostgres(PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(p.Dir); !os.IsNotExist(err) {
		t.Errorf("Dir %s after Close: stat error %v, want not exist", p.Dir, err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := p.Start(); err == nil {
		t.Error("Start after Close succeeded, want an error")
	}
}

func TestPostgresStartPortTaken(t *testing.T) {
	t.Parallel()
	p := StartPostgresT(t, PostgresOptions{})
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	ln, err := net.Listen("tcp", p.Addr)
	if err != nil {
		t.Fatalf("taking the stopped server's port: %v", err)
	}
	defer ln.Close()
	err = p.Start()
	if err == nil {
		t.Fatal("Start on a taken port succeeded, want an error")
	}
	// The error must quote the server log, which names the cause.
	if !strings.Contains(strings.ToLower(err.Error()), "address already in use") {
		t.Fatalf("Start on a taken port: %v; want the log's \"address already in use\"", err)
	}
}
