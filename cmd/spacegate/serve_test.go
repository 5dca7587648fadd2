package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/testenv"
)

// TestServeProcess runs the built binary against a real PostgreSQL and
// Redis, connects through it with psql and redis-cli as a user would, and
// stops it with SIGTERM as systemd or Kubernetes would.
func TestServeProcess(t *testing.T) {
	testenv.Require(t, "psql", "redis-cli")
	bin := needBinary(t)
	pg := testenv.StartPostgresT(t, testenv.PostgresOptions{})
	rd := testenv.StartRedisT(t)

	for _, format := range []string{"json", "console"} {
		t.Run(format, func(t *testing.T) {
			dir, _ := makeQuickstart(t)
			gate := freeGateAddrs(t)
			config := rewriteQuickstartConfig(t, dir, gate, pg.Addr, rd.Addr, format)

			p := startServe(t, bin, config)
			p.waitReady(t, gate.admin)

			client := filepath.Join(dir, "client")
			crt, key, root := filepath.Join(client, "postgresql.crt"), filepath.Join(client, "postgresql.key"), filepath.Join(client, "root.crt")
			_, pgPort, _ := net.SplitHostPort(gate.pg)
			_, redisPort, _ := net.SplitHostPort(gate.redis)

			conn := fmt.Sprintf("host=localhost port=%s user=postgres dbname=postgres sslmode=verify-full sslcert=%s sslkey=%s sslrootcert=%s", pgPort, crt, key, root)
			// "show port" proves the gate reached the test's server, not
			// one on the well-known port.
			out := runClient(t, "psql", conn, "-XAt", "-c", "select 42", "-c", "show port")
			if want := "42\n" + strconv.Itoa(pg.Port) + "\n"; out != want {
				t.Errorf("psql through the gate printed %q, want %q", out, want)
			}

			out = runClient(t, "redis-cli", "--tls", "--cert", crt, "--key", key, "--cacert", root, "-h", "localhost", "-p", redisPort, "ping")
			if strings.TrimSpace(out) != "PONG" {
				t.Errorf("redis-cli ping through the gate printed %q, want PONG", out)
			}

			code, log := p.stop(t, syscall.SIGTERM, 15*time.Second)
			if code != 0 {
				t.Errorf("spacegate serve exited with code %d after SIGTERM, want 0\nlog:\n%s", code, log)
			}
			if !hasLogLine(log, format, "spacegate stopped") {
				t.Errorf("the %s log has no line with message %q:\n%s", format, "spacegate stopped", log)
			}
		})
	}
}

// gateAddrs are the addresses the gate under test listens on.
type gateAddrs struct{ pg, redis, admin string }

// freeGateAddrs picks free loopback addresses for a gate's listeners.
func freeGateAddrs(t *testing.T) gateAddrs {
	return gateAddrs{pg: testenv.FreeAddr(t), redis: testenv.FreeAddr(t), admin: testenv.FreeAddr(t)}
}

// gateRun is a spacegate process started by startGateBinary.
type gateRun struct {
	dir    string // the quickstart directory: PKI, client bundle, rules
	config string // the config file it serves
	addrs  gateAddrs
	proc   *serveProcess
}

// startGateBinary runs the built spacegate in front of a fresh PostgreSQL
// (Redis upstream unused) with a quickstart PKI, and waits until it is
// ready.
func startGateBinary(t *testing.T) gateRun {
	t.Helper()
	bin := needBinary(t)
	pg := testenv.StartPostgresT(t, testenv.PostgresOptions{})
	g := gateRun{addrs: freeGateAddrs(t)}
	g.dir, _ = makeQuickstart(t)
	g.config = rewriteQuickstartConfig(t, g.dir, g.addrs, pg.Addr, testenv.FreeAddr(t), "json")
	g.proc = startServe(t, bin, g.config)
	g.proc.waitReady(t, g.addrs.admin)
	return g
}

// rewriteQuickstartConfig points the quickstart config in dir at free ports
// and at the given upstreams, with logs in format, and returns its path.
func rewriteQuickstartConfig(t *testing.T, dir string, gate gateAddrs, pgUpstream, redisUpstream, format string) string {
	t.Helper()
	config := filepath.Join(dir, "spacegate.yaml")
	data, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, r := range []struct{ old, new string }{
		{"listen: " + qsAdminListen, "listen: " + gate.admin},
		{"listen: " + qsPostgresListen, "listen: " + gate.pg},
		{"listen: " + qsRedisListen, "listen: " + gate.redis},
		{"upstream: 127.0.0.1:5432", "upstream: " + pgUpstream},
		{"upstream: 127.0.0.1:6379", "upstream: " + redisUpstream},
		{"format: console", "format: " + format},
	} {
		if !strings.Contains(text, r.old) {
			t.Fatalf("quickstart config has no %q to rewrite:\n%s", r.old, text)
		}
		text = strings.Replace(text, r.old, r.new, 1)
	}
	writeFile(t, config, text)
	return config
}

// serveProcess is a running `spacegate serve`.
type serveProcess struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer // read only after exited is closed
	exited chan struct{}
	err    error // of Wait, set before exited is closed
}

func startServe(t *testing.T, bin, config string, extra ...string) *serveProcess {
	t.Helper()
	p := &serveProcess{
		cmd:    exec.Command(bin, append([]string{"serve", "--config", config}, extra...)...),
		stderr: new(bytes.Buffer),
		exited: make(chan struct{}),
	}
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting spacegate serve: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// waitReady polls the admin /readyz until it answers 200, failing t if the
// process exits first or 20 seconds pass.
func (p *serveProcess) waitReady(t *testing.T, admin string) {
	t.Helper()
	url := "http://" + admin + "/readyz"
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("spacegate serve exited before it was ready (%v):\n%s", p.err, p.stderr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_, log := p.stop(t, syscall.SIGKILL, 5*time.Second)
			t.Fatalf("%s not ready after 20s (last error: %v); log:\n%s", url, err, log)
		}
	}
}

// stop sends sig and waits up to timeout for the process to exit. It
// returns the exit code (-1 if killed by a signal) and the process's output.
func (p *serveProcess) stop(t *testing.T, sig syscall.Signal, timeout time.Duration) (int, string) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("sending %v: %v", sig, err)
	}
	select {
	case <-p.exited:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		t.Errorf("spacegate serve did not exit within %v of %v; killed it", timeout, sig)
	}
	return p.cmd.ProcessState.ExitCode(), p.stderr.String()
}

// runClient runs a client program with a bounded time and returns its
// standard output, failing t if it fails.
func runClient(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Errorf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// hasLogLine reports whether log holds a line whose message is msg, in zap's
// json or console encoding.
func hasLogLine(log, format, msg string) bool {
	for line := range strings.Lines(log) {
		switch format {
		case "json":
			var entry struct{ Msg string }
			if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == msg {
				return true
			}
		case "console":
			// time, level, caller, message, fields: tab-separated.
			for _, f := range strings.Split(strings.TrimSpace(line), "\t") {
				if f == msg {
					return true
				}
			}
		}
	}
	return false
}

func TestServeBrokenConfig(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	tests := []struct {
		name    string
		rewrite func(config string) string
		want    func(dir string) string // in stderr
	}{
		{
			name:    "unknown key",
			rewrite: func(c string) string { return "colour: blue\n" + c },
			want:    func(dir string) string { return filepath.Join(dir, "spacegate.yaml") + ":1: field colour not found" },
		},
		{
			name: "missing rules file",
			rewrite: func(c string) string {
				return strings.Replace(c, "rules/"+qsRedisRoute+".yaml", "rules/missing.yaml", 1)
			},
			want: func(dir string) string { return filepath.Join(dir, "rules", "missing.yaml") },
		},
		{
			name:    "listen address in use",
			rewrite: func(c string) string { return strings.Replace(c, qsPostgresListen, busy.Addr().String(), 1) },
			want:    func(string) string { return "cannot listen on " + busy.Addr().String() },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, _ := makeQuickstart(t)
			config := filepath.Join(dir, "spacegate.yaml")
			data, err := os.ReadFile(config)
			if err != nil {
				t.Fatal(err)
			}
			// Free ports for whatever the case leaves as it was, in case
			// a wrongly started serve gets as far as listening.
			free := strings.NewReplacer(
				qsPostgresListen, testenv.FreeAddr(t),
				qsRedisListen, testenv.FreeAddr(t),
				qsAdminListen, testenv.FreeAddr(t),
			)
			writeFile(t, config, free.Replace(tt.rewrite(string(data))))

			// In process, with a deadline: a serve that wrongly starts
			// would otherwise block the test forever.
			code, _, stderr := runCLIWithin(t, 15*time.Second, "serve", "--config", config)
			if code != exitError {
				t.Errorf("exit code = %d, want %d\nstderr: %s", code, exitError, stderr)
			}
			if want := tt.want(dir); !strings.Contains(stderr, want) {
				t.Errorf("stderr does not name the problem %q:\n%s", want, stderr)
			}
		})
	}
}
