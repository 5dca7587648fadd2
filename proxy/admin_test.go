package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/testenv"
)

func TestListenNetwork(t *testing.T) {
	for addr, want := range map[string]string{
		"0.0.0.0:5432":          "tcp4",
		"10.0.0.1:5432":         "tcp4",
		"[::ffff:10.0.0.1]:80":  "tcp4",
		"[::]:5432":             "tcp",
		"[::1]:5432":            "tcp6",
		"[2001:db8::1]:5432":    "tcp6",
		"[fe80::1%lo]:5432":     "tcp6",
		"db.example.com:5432":   "tcp",
		"not an address at all": "tcp",
	} {
		if got := listenNetwork(addr); got != want {
			t.Errorf("listenNetwork(%q) = %q, want %q", addr, got, want)
		}
	}
}

// TestListenWildcardFamilies: 0.0.0.0 takes IPv4 peers only; [::] is how
// to ask for IPv6, and takes IPv4 peers too.
func TestListenWildcardFamilies(t *testing.T) {
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		ln.Close()
	}
	dials := func(ln net.Listener, host string) error {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		c, err := net.DialTimeout("tcp", net.JoinHostPort(host, port), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	v4, err := listen("0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer v4.Close()
	if err := dials(v4, "127.0.0.1"); err != nil {
		t.Errorf("0.0.0.0 refuses 127.0.0.1: %v", err)
	}
	if err := dials(v4, "::1"); err == nil {
		t.Errorf("0.0.0.0 accepts a connection to [::1]: it must listen on IPv4 only")
	}
	dual, err := listen("[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dual.Close()
	for _, host := range []string{"::1", "127.0.0.1"} {
		if err := dials(dual, host); err != nil {
			t.Errorf("[::] refuses %s: %v", host, err)
		}
	}
}

// adminGate runs a gate whose admin endpoint reads the token file it
// returns (admin.token_file left out when token is ""), with pprof on.
func adminGate(t *testing.T, token string) (srv *Server, base, tokenFile string) {
	t.Helper()
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "rules.yaml"), "rules: []\n")
	tokenFile = filepath.Join(dir, "admin.token")
	tokenKey := ""
	if token != "" {
		if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		tokenKey = "  token_file: admin.token\n"
	}
	path := filepath.Join(dir, "spacegate.yaml")
	writeFile(t, path, fmt.Sprintf(`admin:
  listen: %s
  pprof: true
%stls: {cert_file: %s, key_file: %s, client_ca_file: %s}
routes:
  - name: db
    protocol: postgres
    listen: %s
    upstream: 127.0.0.1:1
    ip_rules_file: rules.yaml
`, testenv.FreeAddr(t), tokenKey, pki.ServerCertFile, pki.ServerKeyFile, pki.CAFile, testenv.FreeAddr(t)))
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err = NewServer(Options{Config: cfg, Logger: zap.NewNop(), PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("gate did not stop")
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gate not ready")
	}
	return srv, "http://" + srv.AdminAddr().String(), tokenFile
}

func adminGet(t *testing.T, url, auth string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestAdminToken: with admin.token_file, every path but the probes asks
// for the token, on a real listener.
func TestAdminToken(t *testing.T) {
	const token = "0123456789abcdef-admin"
	_, base, _ := adminGate(t, token)
	auths := []struct{ name, header string }{
		{"no token", ""},
		{"wrong token", "Bearer not-the-token"},
		{"token as Basic", "Basic " + token},
		{"token with a prefix", "Bearer x" + token},
		{"right token", "Bearer " + token},
		{"right token, lowercase scheme", "bearer " + token},
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/v1/status", "/debug/pprof/", "/debug/pprof/cmdline", "/no-such-path"} {
		for _, a := range auths {
			resp := adminGet(t, base+path, a.header)
			right := strings.HasPrefix(a.name, "right")
			want := http.StatusUnauthorized
			switch {
			case path == "/healthz" || path == "/readyz":
				want = http.StatusOK
			case right && path == "/no-such-path":
				want = http.StatusNotFound
			case right:
				want = http.StatusOK
			}
			if resp.StatusCode != want {
				t.Errorf("%s, %s: %s, want %d", path, a.name, resp.Status, want)
			}
			if want == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer ") {
				t.Errorf("%s, %s: 401 without WWW-Authenticate: Bearer", path, a.name)
			}
		}
	}
}

// TestAdminWithoutToken: on loopback without a token file the endpoint
// stays open, as before.
func TestAdminWithoutToken(t *testing.T) {
	_, base, _ := adminGate(t, "")
	for _, path := range []string{"/metrics", "/v1/status", "/debug/pprof/"} {
		if resp := adminGet(t, base+path, ""); resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s, want 200 (loopback, no token_file)", path, resp.Status)
		}
	}
}

// TestAdminTokenReload: a new token in the file is in force after the
// watcher's reload, and the old one is refused; an empty file fails the
// reload and keeps the token in force.
func TestAdminTokenReload(t *testing.T) {
	srv, base, file := adminGate(t, "first-token")
	gen := srv.Snapshot().Generation
	if err := os.WriteFile(file, []byte("second-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the new token in force", func() bool {
		return adminGet(t, base+"/v1/status", "Bearer second-token").StatusCode == http.StatusOK
	})
	if resp := adminGet(t, base+"/v1/status", "Bearer first-token"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("old token after the reload: %s, want 401", resp.Status)
	}
	if srv.Snapshot().Generation == gen {
		t.Errorf("no reload counted")
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := srv.Reload()
	if err == nil || !strings.Contains(err.Error(), "admin.token_file") || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("reload with an empty token file: %v", err)
	}
	if resp := adminGet(t, base+"/v1/status", "Bearer second-token"); resp.StatusCode != http.StatusOK {
		t.Errorf("after a failed reload: %s, want the token in force to work", resp.Status)
	}
}

// TestAdminPublicWithoutTokenFailsClosed: an endpoint bound to an address
// other than loopback whose snapshot has no token (a reload dropped
// token_file) refuses rather than open.
func TestAdminPublicWithoutTokenFailsClosed(t *testing.T) {
	srv, _, _ := adminGate(t, "")
	h := admin.Handler(srv, admin.Options{Metrics: srv.metrics, Pprof: true, Public: true})
	for path, want := range map[string]int{"/v1/status": 401, "/metrics": 401, "/debug/pprof/": 401, "/healthz": 200} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != want {
			t.Errorf("%s: %d, want %d", path, rec.Code, want)
		}
	}
}
