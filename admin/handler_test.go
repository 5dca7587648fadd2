package admin

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// gate is a Gate whose answers the test sets.
type gate struct {
	mu     sync.Mutex
	status Status
	ready  bool
	token  []byte
	fleet  []string
}

var _ Gate = (*gate)(nil)

func (g *gate) Status() Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.status
}

func (g *gate) IsReady() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ready
}

func (g *gate) NotReady() string {
	if g.IsReady() {
		return ""
	}
	return "the test says so"
}

func (g *gate) AdminToken() []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.token
}

func (g *gate) Fleet() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fleet
}

func (g *gate) set(f func(*gate)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g)
}

// get asks srv for path with the Authorization header auth ("" for none).
func get(t *testing.T, srv *httptest.Server, path, auth string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// TestHandlerToken: every path but the probes wants the gate's token in
// force; without one, a loopback endpoint is open and a public one refuses.
func TestHandlerToken(t *testing.T) {
	const token = "0123456789abcdef-admin"
	auths := []struct{ name, header string }{
		{"no token", ""},
		{"wrong token", "Bearer not-the-token"},
		{"token as Basic", "Basic " + token},
		{"token with a prefix", "Bearer x" + token},
		{"token with a suffix", "Bearer " + token + "x"},
		{"right token", "Bearer " + token},
		{"right token, lowercase scheme", "bearer " + token},
	}
	paths := []string{"/healthz", "/readyz", "/metrics", "/v1/status", "/debug/pprof/", "/debug/pprof/cmdline", "/no-such-path"}
	for _, tc := range []struct {
		name   string
		token  []byte
		public bool
	}{
		{"token, loopback", []byte(token), false},
		{"token, public", []byte(token), true},
		{"no token, loopback", nil, false},
		{"no token, public", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &gate{ready: true, token: tc.token}
			srv := httptest.NewServer(Handler(g, Options{Metrics: NewMetrics(), Pprof: true, Public: tc.public}))
			defer srv.Close()
			for _, path := range paths {
				for _, a := range auths {
					resp, _ := get(t, srv, path, a.header)
					allowed := tc.token == nil && !tc.public || tc.token != nil && strings.HasPrefix(a.name, "right")
					want := http.StatusUnauthorized
					switch {
					case path == "/healthz" || path == "/readyz":
						want = http.StatusOK
					case allowed && path == "/no-such-path":
						want = http.StatusNotFound
					case allowed:
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
		})
	}
}

// TestHandlerTokenChanges: the token is asked of the gate on each request,
// so that a reload's new token is in force at once and the old one is not.
func TestHandlerTokenChanges(t *testing.T) {
	g := &gate{token: []byte("first")}
	srv := httptest.NewServer(Handler(g, Options{}))
	defer srv.Close()
	if resp, _ := get(t, srv, "/v1/status", "Bearer first"); resp.StatusCode != http.StatusOK {
		t.Fatalf("first token: %s", resp.Status)
	}
	g.set(func(g *gate) { g.token = []byte("second") })
	if resp, _ := get(t, srv, "/v1/status", "Bearer first"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("old token after the change: %s, want 401", resp.Status)
	}
	if resp, _ := get(t, srv, "/v1/status", "Bearer second"); resp.StatusCode != http.StatusOK {
		t.Errorf("new token: %s, want 200", resp.Status)
	}
}

func TestHandlerProbes(t *testing.T) {
	g := &gate{}
	srv := httptest.NewServer(Handler(g, Options{}))
	defer srv.Close()
	if resp, body := get(t, srv, "/healthz", ""); resp.StatusCode != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz: %s %q", resp.Status, body)
	}
	if resp, body := get(t, srv, "/readyz", ""); resp.StatusCode != http.StatusServiceUnavailable || body != "not ready: the test says so\n" {
		t.Errorf("/readyz while not ready: %s %q, want 503 with the gate's reason", resp.Status, body)
	}
	g.set(func(g *gate) { g.ready = true })
	if resp, body := get(t, srv, "/readyz", ""); resp.StatusCode != http.StatusOK || body != "ready\n" {
		t.Errorf("/readyz when ready: %s %q", resp.Status, body)
	}
	if resp, _ := get(t, srv, "/metrics", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/metrics without Options.Metrics: %s, want 404", resp.Status)
	}
	if resp, _ := get(t, srv, "/debug/pprof/", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without Options.Pprof: %s, want 404", resp.Status)
	}
}

// TestHandlerStatus: /v1/status is the gate's Status as JSON, under the
// field names that `spacegate status` and scripts read.
func TestHandlerStatus(t *testing.T) {
	at := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	st := Status{
		Generation: 4, LoadedAt: at, Ready: true,
		Routes: []RouteStatus{{
			Name: "db", Protocol: "postgres", Listen: "127.0.0.1:6432", Enabled: true, Rules: 1, MaxIPRules: 60,
			RuleIDs: []string{"r1"}, Active: 1, ServerCertNotAfter: at.Add(time.Hour),
			Upstream:            &UpstreamHealth{Reachable: false, CheckedAt: at, Error: "connection refused"},
			UpstreamUnavailable: 2,
		}},
		Connections:  []Conn{{ID: "c1", Route: "db", Source: "192.0.2.1:5000", Phase: "splice", Since: at, CertSerial: "1f", User: "app"}},
		CertExpiries: []CertExpiry{{Kind: CertClient, Route: "db", Subject: "spiffe://x", NotAfter: at.Add(time.Hour)}},
	}
	srv := httptest.NewServer(Handler(&gate{status: st}, Options{}))
	defer srv.Close()
	resp, body := get(t, srv, "/v1/status", "")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/v1/status: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	var got Status
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Generation != 4 || len(got.Routes) != 1 || *got.Routes[0].Upstream != *st.Routes[0].Upstream ||
		got.Routes[0].UpstreamUnavailable != 2 || len(got.Connections) != 1 || got.Connections[0] != st.Connections[0] ||
		len(got.CertExpiries) != 1 || got.CertExpiries[0] != st.CertExpiries[0] {
		t.Errorf("decoded %+v, want %+v", got, st)
	}
	for _, key := range []string{
		`"generation"`, `"loaded_at"`, `"ready"`, `"routes"`, `"connections"`, `"cert_expiries"`,
		`"name"`, `"protocol"`, `"listen"`, `"enabled"`, `"rules"`, `"max_ip_rules"`, `"rule_ids"`, `"active"`,
		`"server_cert_not_after"`, `"upstream"`, `"reachable"`, `"checked_at"`, `"error"`, `"upstream_unavailable_total"`,
		`"id"`, `"route"`, `"source"`, `"phase"`, `"since"`, `"cert_serial"`, `"user"`, `"kind"`, `"subject"`, `"not_after"`,
	} {
		if !strings.Contains(body, key+":") {
			t.Errorf("/v1/status lacks the key %s:\n%s", key, body)
		}
	}
}

// TestServerShutdown: Serve returns http.ErrServerClosed once Shutdown has
// run, and the listener is closed.
func TestServerShutdown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(&gate{ready: true}, Options{})
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + ln.Addr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c.CloseIdleConnections()
	if err := s.Shutdown(); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("the listener still accepts after Shutdown")
	}
}
