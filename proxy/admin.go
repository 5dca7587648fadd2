package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/spacegate/spacegate/config"
)

// Status is the document served at /v1/status.
type Status struct {
	Generation  uint64        `json:"generation"`
	LoadedAt    time.Time     `json:"loaded_at"`
	Ready       bool          `json:"ready"`
	Routes      []RouteStatus `json:"routes"`
	Connections []ConnInfo    `json:"connections"`
}

// RouteStatus is one route in /v1/status.
type RouteStatus struct {
	Name               string    `json:"name"`
	Protocol           string    `json:"protocol"`
	Listen             string    `json:"listen"`
	Enabled            bool      `json:"enabled"`
	Rules              int       `json:"rules"`
	MaxIPRules         int       `json:"max_ip_rules"`
	RuleIDs            []string  `json:"rule_ids"`
	Active             int       `json:"active"`
	ServerCertNotAfter time.Time `json:"server_cert_not_after,omitzero"`
	// Upstream is the last probe of the upstream; nil before the first.
	Upstream *UpstreamHealth `json:"upstream,omitempty"`
}

// Status returns what /v1/status serves. Upstream addresses are left out on
// purpose: the admin endpoint may be reachable by more people than the
// config file.
func (s *Server) Status() Status {
	snap := s.Snapshot()
	conns := s.conns.list()
	st := Status{
		Generation:  snap.Generation,
		LoadedAt:    snap.LoadedAt,
		Ready:       s.isReady(),
		Connections: []ConnInfo{},
	}
	active := map[string]int{}
	for _, c := range conns {
		if c.Phase == PhaseSplice.String() {
			active[c.Route]++
			st.Connections = append(st.Connections, c)
		}
	}
	for _, r := range snap.Routes {
		rs := RouteStatus{
			Name: r.Name, Protocol: r.Protocol, Listen: r.Listen, Enabled: r.IsEnabled(),
			Rules: r.Matcher.Len(), MaxIPRules: r.MaxIPRules, RuleIDs: r.Matcher.IDs(), Active: active[r.Name],
		}
		if rs.RuleIDs == nil {
			rs.RuleIDs = []string{}
		}
		if h, ok := s.health.get(r.Name); ok {
			rs.Upstream = &h
		}
		if r.Material != nil && r.Material.Certificate.Leaf != nil {
			rs.ServerCertNotAfter = r.Material.Certificate.Leaf.NotAfter
		}
		st.Routes = append(st.Routes, rs)
	}
	return st
}

func (s *Server) isReady() bool {
	select {
	case <-s.ready:
		return !s.draining.Load()
	default:
		return false
	}
}

// adminOpen are the paths served without the admin token: the probes of
// orchestrators and load balancers, which cannot send one and learn
// nothing from them.
var adminOpen = map[string]bool{"/healthz": true, "/readyz": true}

func (s *Server) adminHandler(withPprof, public bool) http.Handler {
	mux := http.NewServeMux()
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.isReady() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.Status())
	})
	return s.requireToken(mux, public)
}

// requireToken serves every path but the probes only to a request that
// carries the admin token of the snapshot in force, so that a reload
// picks up a new token. Without a token file the endpoint is open, but
// only on a loopback address: public says the address is not, and then a
// missing token (a reload that dropped admin.token_file while the
// listener kept its address) refuses everything rather than open up.
func (s *Server) requireToken(next http.Handler, public bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if adminOpen[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		want := s.Snapshot().adminToken
		if want == nil && !public {
			next.ServeHTTP(w, r)
			return
		}
		if want == nil || !bearerMatches(r.Header.Get("Authorization"), want) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="spacegate admin"`)
			http.Error(w, "spacegate admin: send the token of admin.token_file as Authorization: Bearer TOKEN", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearerMatches reports whether the Authorization header carries want. The
// comparison is of SHA-256 digests in constant time, so that neither the
// token's bytes nor its length show in the time taken.
func bearerMatches(header string, want []byte) bool {
	scheme, got, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	g := sha256.Sum256([]byte(strings.TrimSpace(got)))
	w := sha256.Sum256(want)
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

func (s *Server) startAdmin(ac config.Admin) error {
	if ac.Listen == "" {
		return nil
	}
	addr := ac.Addr()
	// SO_REUSEPORT like the routes, so that a new process can start with
	// the same config beside the old one during an upgrade.
	ln, err := listen(addr)
	if err != nil {
		return fmt.Errorf("admin: cannot listen on %s: %w", addr, err)
	}
	public := !config.IsLoopback(ln.Addr().String())
	srv := &http.Server{Handler: s.adminHandler(ac.Pprof, public), ReadHeaderTimeout: 5 * time.Second}
	s.mu.Lock()
	s.admin = srv
	s.adminAddr = ln.Addr()
	s.mu.Unlock()
	s.log.Info("admin listening", zap.String("listen", ln.Addr().String()), zap.Bool("token", s.Snapshot().adminToken != nil))
	go func() { _ = srv.Serve(ln) }()
	return nil
}

func (s *Server) stopAdmin() {
	s.mu.Lock()
	srv := s.admin
	s.mu.Unlock()
	if srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
}
