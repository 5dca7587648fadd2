package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/spacegate/spacegate/internal/testenv"
)

func TestSdNotifyMessage(t *testing.T) {
	tests := []struct {
		state string
		want  string
	}{
		{"ready", "READY=1\nSTATUS=serving"},
		{"reloading", "RELOADING=1\nMONOTONIC_USEC=1500000\nSTATUS=reloading"},
		{"stopping", "STOPPING=1\nSTATUS=draining connections"},
		{"dancing", ""},
	}
	for _, tt := range tests {
		if got := sdNotifyMessage(tt.state, 1500*time.Millisecond); got != tt.want {
			t.Errorf("sdNotifyMessage(%q) = %q, want %q", tt.state, got, tt.want)
		}
	}
}

// notifySocket is the receiving end of $NOTIFY_SOCKET, as systemd holds it.
type notifySocket struct {
	path string
	conn *net.UnixConn
}

// listenNotify binds a datagram socket in a temporary directory and points
// $NOTIFY_SOCKET at it for the rest of the test.
func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv(notifySocketEnv, path)
	return &notifySocket{path: path, conn: conn}
}

// next returns the next datagram's fields, failing t after timeout.
func (s *notifySocket) next(t *testing.T, timeout time.Duration) map[string]string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := s.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	n, err := s.conn.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify message within %v: %v", timeout, err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(buf[:n]), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("sd_notify message %q has a line without '=': %q", buf[:n], line)
		}
		fields[k] = v
	}
	return fields
}

// none fails t if a datagram arrives within d.
func (s *notifySocket) none(t *testing.T, d time.Duration) {
	t.Helper()
	buf := make([]byte, 4096)
	_ = s.conn.SetReadDeadline(time.Now().Add(d))
	if n, err := s.conn.Read(buf); err == nil {
		t.Errorf("unexpected sd_notify message %q", buf[:n])
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("reading the notify socket: %v", err)
	}
}

func TestSdNotifierUnset(t *testing.T) {
	t.Setenv(notifySocketEnv, "")
	if n := sdNotifier(zap.NewNop()); n != nil {
		t.Errorf("sdNotifier without $%s is not nil", notifySocketEnv)
	}
}

// TestSdNotifier sends every state over a real datagram socket, and checks
// that nothing follows "stopping".
func TestSdNotifier(t *testing.T) {
	sock := listenNotify(t)
	notify := sdNotifier(zap.NewNop())
	if notify == nil {
		t.Fatalf("sdNotifier with $%s set returned nil", notifySocketEnv)
	}
	before := monotonicNow()
	notify("ready")
	if m := sock.next(t, 2*time.Second); m["READY"] != "1" || m["STATUS"] != "serving" {
		t.Errorf("after ready got %v, want READY=1 and STATUS=serving", m)
	}
	notify("reloading")
	m := sock.next(t, 2*time.Second)
	if m["RELOADING"] != "1" {
		t.Errorf("after reloading got %v, want RELOADING=1", m)
	}
	usec, err := strconv.ParseInt(m["MONOTONIC_USEC"], 10, 64)
	if err != nil || time.Duration(usec)*time.Microsecond < before.Truncate(time.Microsecond) || time.Duration(usec)*time.Microsecond > monotonicNow() {
		t.Errorf("MONOTONIC_USEC=%q is not CLOCK_MONOTONIC now (between %v and now)", m["MONOTONIC_USEC"], before)
	}
	notify("stopping")
	if m := sock.next(t, 2*time.Second); m["STOPPING"] != "1" {
		t.Errorf("after stopping got %v, want STOPPING=1", m)
	}
	notify("ready") // a reload that raced with shutdown
	sock.none(t, 200*time.Millisecond)
}

// TestServeNotifiesSystemd runs the built binary with $NOTIFY_SOCKET, as
// systemd runs a Type=notify service, and follows it through start, a
// SIGHUP reload and a SIGTERM drain.
func TestServeNotifiesSystemd(t *testing.T) {
	bin := needBinary(t)
	sock := listenNotify(t)
	dir, _ := makeQuickstart(t)
	gate := gateAddrs{pg: testenv.FreeAddr(t), redis: testenv.FreeAddr(t), admin: testenv.FreeAddr(t)}
	// Nothing connects: the upstreams need not exist.
	config := rewriteQuickstartConfig(t, dir, gate, testenv.FreeAddr(t), testenv.FreeAddr(t), "json")

	p := startServe(t, bin, config)
	if m := sock.next(t, 20*time.Second); m["READY"] != "1" {
		t.Fatalf("first message %v, want READY=1", m)
	}
	// READY=1 must mean serving: the listeners accept at once.
	for _, addr := range []string{gate.pg, gate.redis} {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Errorf("READY=1 sent but %s does not accept: %v", addr, err)
			continue
		}
		c.Close()
	}

	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if m := sock.next(t, 10*time.Second); m["RELOADING"] != "1" || m["MONOTONIC_USEC"] == "" {
		t.Errorf("after SIGHUP got %v, want RELOADING=1 with MONOTONIC_USEC", m)
	}
	if m := sock.next(t, 10*time.Second); m["READY"] != "1" {
		t.Errorf("after the reload got %v, want READY=1", m)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if m := sock.next(t, 10*time.Second); m["STOPPING"] != "1" {
		t.Errorf("after SIGTERM got %v, want STOPPING=1", m)
	}
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("spacegate serve did not exit within 15s of SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0; log:\n%s", code, p.stderr)
	}
}
