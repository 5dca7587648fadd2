package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spacegate/spacegate/internal/testenv"
)

// blackhole is a TCP address whose listener never accepts: a connection
// completes in the kernel's backlog, and nothing ever reads or answers.
func blackhole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// TestCancelFanOutSkipsBlackholes: a plaintext cancel on a listener shared
// by three routes, two of whose upstreams never answer and are listed
// first, reaches the right upstream at once, and the gate lets the client
// go within the cancel bound.
func TestCancelFanOutSkipsBlackholes(t *testing.T) {
	pg := sharedPostgres(t)
	addr := testenv.FreeAddr(t)
	e := newEnv(t, envOptions{routes: fmt.Sprintf(`  - name: hole1
    protocol: postgres
    listen: %[1]s
    server_names: [hole1.test]
    upstream: %[2]s
    ip_rules_file: rules.yaml
  - name: hole2
    protocol: postgres
    listen: %[1]s
    server_names: [hole2.test]
    upstream: %[3]s
    ip_rules_file: rules.yaml
  - name: db
    protocol: postgres
    listen: %[1]s
    server_names: [db.test]
    upstream: %[4]s
    ip_rules_file: rules.yaml
`, addr, blackhole(t), blackhole(t), pg.Addr)})
	client := e.pki.Client(t, "all", testenv.ForRoutes("hole1", "hole2", "db"))
	c, err := pgConnect(t, pgURL(e.pki, client, "db.test", addr, "verify-ca"), withLookup)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())

	// psql's Ctrl-C: a new plaintext connection carrying only the
	// CancelRequest, so no server name tells the gate which route it is for.
	pkt := binary.BigEndian.AppendUint32([]byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e}, c.PgConn().PID())
	pkt = append(pkt, c.PgConn().SecretKey()...)
	if len(pkt) != 16 {
		t.Fatalf("cancel packet of %d bytes; the upstream speaks protocol 3.0", len(pkt))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	queryDone := make(chan error, 1)
	go func() { _, err := c.Exec(ctx, "select pg_sleep(30)"); queryDone <- err }()
	waitFor(t, 10*time.Second, "pg_sleep to run upstream", func() bool { return sleeping(t) == 1 })

	start := time.Now()
	nc := dialPlain(t, addr)
	if _, err := nc.Write(pkt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-queryDone:
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			t.Fatalf("query ended with %v, want 57014 query_canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("query not canceled after 10s")
	}
	// In turn, each blackhole would hold the cancel for the 2s bound first.
	reached := time.Since(start)
	t.Logf("query canceled %s after the CancelRequest", reached)
	if d := reached; d > time.Second {
		t.Errorf("cancel reached the upstream after %s, want well under the 2s bound", d)
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.Copy(io.Discard, nc); n != 0 || err != nil {
		t.Fatalf("the gate answered a cancel: %d bytes, %v", n, err)
	}
	// psql waits for this close inside its SIGINT handler: the gate lets
	// it go once an upstream has taken the packet, not at the bound.
	t.Logf("cancel connection closed by the gate after %s", time.Since(start))
	if d := time.Since(start); d > time.Second {
		t.Errorf("the gate held the cancel connection %s, want it closed at the first delivery", d)
	}
	waitFor(t, 5*time.Second, "cancel counted forwarded to db, failed on both blackholes", func() bool {
		return e.cancelsCounted("db", "forwarded") == 1 && e.cancelsCounted("hole1", "failed") == 1 && e.cancelsCounted("hole2", "failed") == 1
	})

	t.Run("psql Ctrl-C", func(t *testing.T) {
		testenv.Require(t, "psql")
		// psql installs its SIGINT handler only after connecting.
		d, out := psqlCtrlC(t, pgURL(e.pki, client, "db.test", addr, "verify-ca"), 10*time.Second,
			func() bool { return sleeping(t) == 1 })
		t.Logf("psql ended %s after Ctrl-C", d)
		if d > time.Second {
			t.Errorf("psql ended %s after Ctrl-C, want well under the 2s bound", d)
		}
		if !strings.Contains(out, "canceling statement due to user request") {
			t.Fatalf("psql output: %s", out)
		}
	})
}

// psqlCtrlC runs psql with a 30-second pg_sleep on url, presses Ctrl-C
// once running says the query runs upstream, and returns how long psql
// took to end after it, and what it printed. psql must end within limit.
func psqlCtrlC(t *testing.T, url string, limit time.Duration, running func() bool) (time.Duration, string) {
	t.Helper()
	// Signalled before its query runs, psql would die of the signal.
	return psqlSleep(t, url, limit, running, "Ctrl-C", func(cmd *exec.Cmd) { cmd.Process.Signal(syscall.SIGINT) })
}

// psqlSleep runs psql with a 30-second pg_sleep on url, does act (named
// what) once running says the query runs upstream, and returns how long
// psql took to end after it, and what it printed. psql must end within
// limit.
func psqlSleep(t *testing.T, url string, limit time.Duration, running func() bool, what string, act func(*exec.Cmd)) (time.Duration, string) {
	t.Helper()
	cmd := exec.Command("psql", url, "-Xc", "select pg_sleep(30)")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	waitFor(t, 10*time.Second, "pg_sleep to run upstream", running)
	start := time.Now()
	act(cmd)
	select {
	case <-done:
	case <-time.After(limit):
		cmd.Process.Kill()
		<-done
		t.Fatalf("psql still running %s after %s: %s", limit, what, out.String())
	}
	return time.Since(start), out.String()
}
