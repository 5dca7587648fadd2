package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/testenv"
	"github.com/spacegate/spacegate/proxy"
)

// adminEnv is a config with a PostgreSQL route "db" and a Redis route
// "cache", and a space CA with a server certificate made by `ca init`, for
// the tests of the ca, certs and ip-rules commands. Nothing listens on its
// addresses until a test starts a gate.
type adminEnv struct {
	dir    string // holds spacegate.yaml, pki/, rules/
	config string
	pki    string
	admin  string // admin.listen
	pg     string // listen address of route db
	redis  string // listen address of route cache
}

// newAdminEnv writes the config, pointing the routes at the given
// upstreams, and runs `ca init`.
func newAdminEnv(t *testing.T, pgUpstream, redisUpstream string) *adminEnv {
	t.Helper()
	dir := t.TempDir()
	e := &adminEnv{
		dir: dir, config: filepath.Join(dir, "spacegate.yaml"), pki: filepath.Join(dir, "pki"),
		admin: testenv.FreeAddr(t), pg: testenv.FreeAddr(t), redis: testenv.FreeAddr(t),
	}
	config := `admin:
  listen: ` + e.admin + `
tls:
  cert_file: pki/server.crt
  key_file: pki/server.key
  client_ca_file: pki/ca.crt
  crl_file: pki/ca.crl
pki:
  dir: pki
limits:
  drain_timeout: 1s
routes:
  - name: db
    protocol: postgres
    listen: ` + e.pg + `
    upstream: ` + pgUpstream + `
    ip_rules_file: rules/db.yaml
  - name: cache
    protocol: redis
    listen: ` + e.redis + `
    upstream: ` + redisUpstream + `
    ip_rules_file: rules/cache.yaml
    max_ip_rules: 2
`
	writeFile(t, e.config, config)
	if err := os.MkdirAll(filepath.Join(dir, "rules"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "rules", "cache.yaml"), "rules: []\n")
	writeFile(t, filepath.Join(dir, "rules", "db.yaml"), "rules: []\n")
	e.mustRun(t, "ca", "init", "--server-name", "localhost,127.0.0.1")
	return e
}

// run runs a command with --config set to the env's config.
func (e *adminEnv) run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLI(t, append(args, "--config", e.config)...)
}

// mustRun runs a command that must succeed and returns its stdout.
func (e *adminEnv) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	return e.mustRunCode(t, exitOK, args...)
}

// mustRunCode runs a command that must exit with want and returns its
// stdout: exitWait for a change made while no gate runs to confirm it.
func (e *adminEnv) mustRunCode(t *testing.T, want int, args ...string) string {
	t.Helper()
	code, stdout, stderr := e.run(t, args...)
	if code != want {
		t.Fatalf("spacegate %s: exit code %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, stdout, stderr)
	}
	return stdout
}

// mustJSON runs a command with --json and decodes its output into v.
func (e *adminEnv) mustJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	e.mustJSONCode(t, exitOK, v, args...)
}

// mustJSONCode is mustJSON for a command that must exit with want.
func (e *adminEnv) mustJSONCode(t *testing.T, want int, v any, args ...string) {
	t.Helper()
	out := e.mustRunCode(t, want, append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("spacegate %s --json printed no JSON (%v):\n%s", strings.Join(args, " "), err, out)
	}
}

// createCert runs `certs create` and returns the new certificate.
func (e *adminEnv) createCert(t *testing.T, args ...string) certView {
	t.Helper()
	var v certView
	e.mustJSON(t, &v, append([]string{"certs", "create"}, args...)...)
	return v
}

// path returns a path inside the env's directory.
func (e *adminEnv) path(elem ...string) string {
	return filepath.Join(append([]string{e.dir}, elem...)...)
}

// auditLines returns the entries of the audit log.
func (e *adminEnv) auditLines(t *testing.T) []auditEntry {
	t.Helper()
	f, err := os.Open(filepath.Join(e.pki, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var entries []auditEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var a auditEntry
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatalf("audit log line %q is not JSON: %v", sc.Text(), err)
		}
		entries = append(entries, a)
	}
	return entries
}

// gate is a gate running in this process on an adminEnv's config.
type gate struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startGate loads the config and runs a gate until the test ends or stop.
func startGate(t *testing.T, path string) *gate {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("loading config: %v", err)
	}
	srv, err := proxy.NewServer(proxy.Options{Config: cfg})
	if err != nil {
		t.Fatalf("starting gate: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &gate{cancel: cancel, done: make(chan error, 1)}
	go func() { g.done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-g.done:
		cancel()
		t.Fatalf("gate stopped before it was ready: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("gate not ready after 10s")
	}
	t.Cleanup(func() { g.stop(t) })
	return g
}

// stop stops the gate and waits for it; calling it twice is harmless.
func (g *gate) stop(t *testing.T) {
	t.Helper()
	g.once.Do(func() {
		g.cancel()
		select {
		case err := <-g.done:
			if err != nil {
				t.Errorf("gate: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("gate did not stop within 10s")
		}
	})
}

// restartGate stops g and starts a gate on config again.
//
// The admin commands only write files; a running gate takes them up when it
// reloads them on change. A restart loads the same files from scratch, so a
// test that restarts passes against a gate that reloads too, and checks what
// the files say rather than how fast a reload is.
func restartGate(t *testing.T, g *gate, config string) *gate {
	t.Helper()
	g.stop(t)
	return startGate(t, config)
}
