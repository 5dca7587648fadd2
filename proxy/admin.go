package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
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

func (s *Server) adminHandler(withPprof bool) http.Handler {
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
	return mux
}

func (s *Server) startAdmin(ac AdminConfig) error {
	addr := ac.Listen
	if addr == "" {
		return nil
	}
	// SO_REUSEPORT like the routes, so that a new process can start with
	// the same config beside the old one during an upgrade.
	ln, err := listen(addr)
	if err != nil {
		return fmt.Errorf("admin: cannot listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: s.adminHandler(ac.Pprof), ReadHeaderTimeout: 5 * time.Second}
	s.mu.Lock()
	s.admin = srv
	s.adminAddr = ln.Addr()
	s.mu.Unlock()
	s.log.Info("admin listening", zap.String("listen", ln.Addr().String()))
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
