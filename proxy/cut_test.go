package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spacegate/spacegate/internal/splice"
	"github.com/spacegate/spacegate/internal/testenv"
)

// copyRows is an endless COPY text stream; n counts the bytes read.
type copyRows struct{ n atomic.Int64 }

var copyLine = []byte("1\t" + strings.Repeat("x", 100) + "\n")

func (r *copyRows) Read(p []byte) (int, error) {
	k := len(p) / len(copyLine) * len(copyLine)
	if k == 0 {
		return copy(p, copyLine[:len(p)]), nil // a line split in two reads is still a line
	}
	for i := 0; i < k; i += len(copyLine) {
		copy(p[i:], copyLine)
	}
	r.n.Add(int64(k))
	return k, nil
}

// cutWhenSent cuts every connection of e once rows has given 2 MiB: the
// client is then in the middle of sending, as fast as it can.
func cutWhenSent(t *testing.T, e *env, rows *copyRows, why string) {
	waitFor(t, 20*time.Second, "the COPY to be under way", func() bool { return rows.n.Load() >= 2<<20 })
	e.srv.conns.cutAll(&Refusal{Reason: ReasonShutdown, Msg: why})
}

// TestCutDuringCopyFromStdin cuts a session in the middle of COPY FROM
// STDIN, while the client sends as fast as it can: pgx and psql must each
// report FATAL 57P01 with the reason, every one of 30 times. A cut that
// closes the client's socket with its bytes unread answers them with a
// reset, which can overtake the FATAL (issue 13); the engine's graceful
// close reads them first.
func TestCutDuringCopyFromStdin(t *testing.T) {
	pg := sharedPostgres(t)
	ctx := context.Background()
	if err := pg.Exec(ctx, "CREATE TABLE IF NOT EXISTS cut_copy (id int, pad text)"); err != nil {
		t.Fatal(err)
	}
	runs := 30
	if testing.Short() {
		runs = 3
	}
	forEachSplice(t, func(t *testing.T, goroutines bool) {
		e := newEnv(t, envOptions{noRedis: true, goroutineSplice: goroutines})
		t.Run("pgx", func(t *testing.T) {
			for run := range runs {
				c, err := pgConnect(t, e.pgConnString(e.client))
				if err != nil {
					t.Fatal(err)
				}
				why := fmt.Sprintf("pgx run %d", run)
				rows := &copyRows{}
				go cutWhenSent(t, e, rows, why)
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err = c.PgConn().CopyFrom(cctx, rows, "COPY cut_copy FROM STDIN")
				cancel()
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || !strings.Contains(pgErr.Message, why) {
					t.Fatalf("run %d: want FATAL 57P01 %q, got %v", run, why, err)
				}
				c.Close(ctx)
				waitFor(t, 10*time.Second, "the connection's end", func() bool { return e.srv.conns.len() == 0 })
			}
		})
		t.Run("psql", func(t *testing.T) {
			testenv.Require(t, "psql")
			for run := range runs {
				why := fmt.Sprintf("psql run %d", run)
				rows := &copyRows{}
				cmd := exec.Command("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "COPY cut_copy FROM STDIN", e.pgConnString(e.client))
				cmd.Stdin = rows
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				cutWhenSent(t, e, rows, why)
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				select {
				case <-done:
				case <-time.After(20 * time.Second):
					cmd.Process.Kill()
					<-done
					t.Fatalf("run %d: psql still running 20s after the cut:\n%s", run, out.String())
				}
				if want := "FATAL:  terminating connection: " + why; !strings.Contains(out.String(), want) {
					t.Fatalf("run %d: psql did not report %q:\n%s", run, want, out.String())
				}
				waitFor(t, 10*time.Second, "the connection's end", func() bool { return e.srv.conns.len() == 0 })
			}
		})
	})
}

// TestMassCutStalledSessions cuts 150 sessions whose clients stopped
// reading a large result: none may hold an OS thread while its last bytes
// wait (the process stays under 40 threads), and all end within the cut's
// bounds.
func TestMassCutStalledSessions(t *testing.T) {
	if _, ok := testenv.Threads(); !ok {
		t.Skip("counts threads in /proc/self/status")
	}
	forEachSplice(t, func(t *testing.T, goroutines bool) {
		const n = 150
		e := newEnv(t, envOptions{noRedis: true, goroutineSplice: goroutines, maxConnections: 400,
			limits: "  max_connections_per_source: 400\n  max_connections_per_certificate: 400\n"})
		ctx := context.Background()
		var conns []*pgx.Conn
		defer func() {
			for _, c := range conns {
				c.PgConn().Conn().Close()
			}
		}()
		for range n {
			c, err := pgConnect(t, e.pgConnString(e.client))
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			// Sent, never read: the server's result fills every buffer on
			// the way and stalls.
			_ = c.PgConn().Exec(ctx, "SELECT repeat('x', 8000) FROM generate_series(1, 100000)")
		}
		waitFor(t, 30*time.Second, "every result to stall", func() bool {
			return stalledBackends(t) >= n
		})
		peakThreads := testenv.PeakThreads(t)
		start := time.Now()
		e.srv.conns.cutAll(&Refusal{Reason: ReasonShutdown, Msg: "mass cut"})
		waitFor(t, 15*time.Second, "every cut session to end", func() bool { return e.srv.conns.len() == 0 })
		took := time.Since(start)
		peak := peakThreads()
		t.Logf("%d stalled sessions cut in %v; at most %d OS threads", n, took.Round(time.Millisecond), peak)
		if p := peak; p >= 40 {
			t.Errorf("%d OS threads during the cut, want under 40", p)
		}
		// A stalled session is mid-row: its cut waits out the grace, then
		// aborts. (The 150 backends that exit then share the machine's CPU
		// with the gate: allow for it.)
		if limit := cutGrace + splice.LingerTime + 3*time.Second; took > limit {
			t.Errorf("cut took %v, want under %v", took, limit)
		}
	})
}

// stalledBackends counts the shared PostgreSQL's backends blocked sending
// the test's result to a client.
func stalledBackends(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, sharedPostgres(t).ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var k int
	err = c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'ClientWrite' AND query LIKE 'SELECT repeat%'").Scan(&k)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestCutDuringDial cuts a connection while its upstream is being dialled
// (an upstream that takes the TCP connection and never answers the
// SSLRequest): the dial is cancelled and the client gets FATAL 57P01 with
// the reason, not a bare close.
func TestCutDuringDial(t *testing.T) {
	// The gate's health probes connect and close; the dial sends an
	// SSLRequest, which is held unanswered.
	held := make(chan net.Conn, 1)
	peer := startPeer(t, func(nc net.Conn) {
		go func() {
			b := make([]byte, len(sslRequestPacket))
			if _, err := io.ReadFull(nc, b); err != nil || !bytes.Equal(b, sslRequestPacket) {
				nc.Close()
				return
			}
			held <- nc
		}()
	})
	var dialled net.Conn
	defer func() {
		if dialled != nil {
			dialled.Close()
		}
	}()
	addr := testenv.FreeAddr(t)
	e := newEnv(t, envOptions{routes: fmt.Sprintf(`  - name: db
    protocol: postgres
    listen: %s
    upstream: %s
    upstream_tls: require
    ip_rules_file: {{dir}}/rules.yaml
`, addr, peer.ln.Addr())})
	e.pgAddr = addr
	got := make(chan error, 1)
	go func() {
		c, err := pgConnect(t, e.pgConnString(e.client))
		if err == nil {
			c.Close(context.Background())
		}
		got <- err
	}()
	select {
	case dialled = <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("no SSLRequest reached the upstream")
	}
	start := time.Now()
	e.srv.conns.cutAll(&Refusal{Reason: ReasonShutdown, Msg: "cut while dialling"})
	var err error
	select {
	case err = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the client got no answer 10s after the cut")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || !strings.Contains(pgErr.Message, "cut while dialling") {
		t.Fatalf("want FATAL 57P01 naming the cut, got %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("told after %v: the dial was not cancelled (the connect timeout is 2s)", d)
	}
	waitFor(t, 10*time.Second, "the audit line of the cut", func() bool {
		return e.logs.FilterMessage("connection cut").Len() == 1
	})
}
