package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spacegate/spacegate/internal/testenv"
)

// TestPGFramerLast: last is the type of the latest message whose header
// has come, however the stream is split.
func TestPGFramerLast(t *testing.T) {
	msg := func(typ byte, body string) []byte {
		b := []byte{typ, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
		return append(b, body...)
	}
	z, d, e := msg('Z', "I"), msg('D', "row"), msg('E', "SFATAL\x00")
	cases := []struct {
		stream []byte
		want   byte
	}{
		{nil, 0},
		{z[:4], 0},
		{z, 'Z'},
		{append(z, d[:5]...), 'D'}, // a header alone is enough
		{bytes.Join([][]byte{z, d, e}, nil), 'E'},
		{bytes.Join([][]byte{e, z}, nil), 'Z'},
	}
	for _, tc := range cases {
		for split := 1; split <= max(len(tc.stream), 1); split++ {
			var f pgFramer
			for p := tc.stream; len(p) > 0; p = p[min(split, len(p)):] {
				f.Advance(p[:min(split, len(p))])
			}
			if f.last != tc.want {
				t.Errorf("%q in chunks of %d: last %q, want %q", tc.stream, split, f.last, tc.want)
			}
		}
	}
}

// backendMessages reads what a PostgreSQL client's socket receives until
// EOF, closes it, and returns the types of the messages and the SQLSTATE of each
// ErrorResponse.
func backendMessages(t *testing.T, c *pgx.Conn) (types string, codes []string) {
	t.Helper()
	raw := c.PgConn().Conn()
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	all, err := io.ReadAll(raw)
	if err != nil {
		t.Fatalf("reading to the end: %v (after %q)", err, all)
	}
	for len(all) >= 5 {
		n := int(binary.BigEndian.Uint32(all[1:5])) + 1
		if n < 5 || n > len(all) {
			t.Fatalf("a torn message in %q", all)
		}
		types += string(all[0])
		if all[0] == 'E' {
			var e pgproto3.ErrorResponse
			if err := e.Decode(all[5:n]); err != nil {
				t.Fatal(err)
			}
			codes = append(codes, e.Code+" "+e.Message)
		}
		all = all[n:]
	}
	if len(all) > 0 {
		t.Fatalf("%d bytes after the last whole message", len(all))
	}
	raw.Close() // as a client does at EOF: the session ends
	return types, codes
}

// backendPID returns the pid of the backend of pg that runs a query like
// pattern, or 0 if none does.
func backendPID(t *testing.T, pg *testenv.Postgres, pattern string) int {
	t.Helper()
	c, err := pgConnect(t, pg.ConnString())
	if err != nil {
		return 0
	}
	defer c.Close(context.Background())
	var pid int
	if err := c.QueryRow(context.Background(), "select pid from pg_stat_activity where query like $1 and pid <> pg_backend_pid()", pattern).Scan(&pid); err != nil {
		return 0
	}
	return pid
}

// TestUpstreamLost: when the database closes a live session without a
// word, the client gets FATAL 08006 naming the route; when it says why, or
// the client said goodbye, nothing is added. Each loss is counted.
func TestUpstreamLost(t *testing.T) {
	testenv.Require(t, "psql")
	pg := testenv.StartPostgresT(t, testenv.PostgresOptions{})
	forEachSplice(t, func(t *testing.T, goroutines bool) {
		e := newEnv(t, envOptions{noRedis: true, pgUpstream: pg.Addr, goroutineSplice: goroutines})
		const series = `spacegate_connections_upstream_lost_total{route="db"}`
		if !strings.Contains(e.get(t, "/metrics"), series+" 0\n") {
			t.Fatalf("/metrics lacks %s 0 before any session", series)
		}
		lost := func() float64 { return e.metricSum(t, "spacegate_connections_upstream_lost_total", `route="db"`) }
		// Sessions ended, lost or not: each logs one line.
		ended := func() int { return e.logs.FilterMessageSnippet("connection closed").Len() }
		connect := func(t *testing.T) (*pgx.Conn, int) {
			c, err := pgConnect(t, e.pgConnString(e.client))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close(context.Background()) })
			return c, mustQueryInt(t, c, "select pg_backend_pid()")
		}

		t.Run("backend killed -9 in a query: psql is told, naming the route", func(t *testing.T) {
			before := lost()
			var pid int
			_, out := psqlSleep(t, e.pgConnString(e.client), 10*time.Second, func() bool {
				pid = backendPID(t, pg, "select pg_sleep(30)%")
				return pid != 0
			}, "its backend was killed", func(*exec.Cmd) { syscall.Kill(pid, syscall.SIGKILL) })
			t.Logf("psql:\n%s", out)
			for _, want := range []string{
				"FATAL:  the database behind route db closed the connection unexpectedly",
				"HINT:  the database server restarted, crashed or ended this session without saying why",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("psql did not print %q", want)
				}
			}
			waitFor(t, 5*time.Second, "the loss to be counted", func() bool { return lost() == before+1 })
			entries := e.logs.FilterMessage("connection closed: the upstream closed it unexpectedly").All()
			if len(entries) == 0 || entries[len(entries)-1].ContextMap()["client_told"] != true {
				t.Errorf("no log line of a loss the client was told of: %v", entries)
			}
			// The postmaster restarts every backend after a crash.
			waitFor(t, 30*time.Second, "PostgreSQL to recover from the crash", func() bool {
				c, err := pgConnect(t, pg.ConnString())
				if err == nil {
					c.Close(context.Background())
				}
				return err == nil
			})
		})

		t.Run("pg_terminate_backend: the server's FATAL 57P01 alone", func(t *testing.T) {
			before, endedBefore := lost(), ended()
			c, pid := connect(t)
			if err := pg.Exec(context.Background(), fmt.Sprintf("select pg_terminate_backend(%d)", pid)); err != nil {
				t.Fatal(err)
			}
			types, codes := backendMessages(t, c)
			if types != "E" || len(codes) != 1 || !strings.HasPrefix(codes[0], "57P01 ") {
				t.Errorf("the client received %q %q, want the server's ErrorResponse 57P01 and nothing after it", types, codes)
			}
			waitFor(t, 5*time.Second, "the session's end to be logged", func() bool { return ended() > endedBefore })
			if got := lost(); got != before {
				t.Errorf("upstream_lost went from %v to %v for a session the server ended with a FATAL", before, got)
			}
		})

		t.Run("client Terminate: nothing added", func(t *testing.T) {
			before, endedBefore := lost(), ended()
			c, _ := connect(t)
			// Terminate, and keep reading: the server's close answers it.
			if _, err := c.PgConn().Conn().Write([]byte{'X', 0, 0, 0, 4}); err != nil {
				t.Fatal(err)
			}
			if types, codes := backendMessages(t, c); types != "" {
				t.Errorf("after Terminate the client received %q %q, want nothing", types, codes)
			}
			waitFor(t, 5*time.Second, "the session's end to be logged", func() bool { return ended() > endedBefore })
			if got := lost(); got != before {
				t.Errorf("upstream_lost went from %v to %v for a session the client ended", before, got)
			}
		})
	})
}
