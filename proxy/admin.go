package proxy

import (
	"errors"
	"fmt"
	"net/http"

	"go.uber.org/zap"

	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/tlsconf"
)

// Server serves the admin API (package admin) of itself.
var _ admin.Gate = (*Server)(nil)

// Status returns what /v1/status serves: the snapshot in force, the
// spliced connections, the last upstream probes and the certificate
// expiries the gate knows of.
func (s *Server) Status() admin.Status {
	snap := s.Snapshot()
	conns := s.conns.list()
	st := admin.Status{
		Name:         s.name,
		Fingerprint:  snap.Fingerprint,
		Generation:   snap.Generation,
		LoadedAt:     snap.LoadedAt,
		Ready:        s.IsReady(),
		Connections:  []admin.Conn{},
		CertExpiries: s.metrics.ClientExpiries(),
	}
	active := map[string]int{}
	for _, c := range conns {
		if c.Phase == PhaseSplice.String() {
			active[c.Route]++
			st.Connections = append(st.Connections, c)
		}
	}
	unavailable := s.metrics.RefusedByRoute(ReasonUpstreamUnavailable.String())
	for _, r := range snap.Routes {
		rs := admin.RouteStatus{
			Name: r.Name, Protocol: r.Protocol, Listen: r.Listen, Enabled: r.IsEnabled(),
			Rules: r.Matcher.Len(), MaxIPRules: r.MaxIPRules, RuleIDs: r.Matcher.IDs(), Active: active[r.Name],
			UpstreamUnavailable: unavailable[r.Name],
			RulesDigest:         r.RulesDigest, CAFingerprints: []string{}, CRLs: crlFacts(r.Material),
		}
		if rs.RuleIDs == nil {
			rs.RuleIDs = []string{}
		}
		if h, ok := s.health.get(r.Name); ok {
			rs.Upstream = &h
		}
		if r.Material != nil {
			if leaf := r.Material.Certificate.Leaf; leaf != nil {
				rs.ServerCertNotAfter = leaf.NotAfter
				rs.ServerCertSerial = tlsconf.FormatSerial(leaf.SerialNumber)
				st.CertExpiries = append(st.CertExpiries, admin.CertExpiry{Kind: admin.CertServer, Route: r.Name, Subject: leaf.Subject.String(), NotAfter: leaf.NotAfter})
			}
			rs.CAFingerprints = caFingerprints(r.Material)
			for _, ca := range r.Material.CAs {
				st.CertExpiries = append(st.CertExpiries, admin.CertExpiry{Kind: admin.CertCA, Route: r.Name, Subject: ca.Subject.String(), NotAfter: ca.NotAfter})
			}
		}
		st.Routes = append(st.Routes, rs)
	}
	if st.CertExpiries == nil {
		st.CertExpiries = []admin.CertExpiry{}
	}
	admin.SortCertExpiries(st.CertExpiries)
	return st
}

// IsReady reports whether the gate wants new connections (/readyz): see
// NotReady.
func (s *Server) IsReady() bool { return s.NotReady() == "" }

// NotReady returns why the gate does not want new connections, or "" when
// it does: every listener accepts, it is not draining and, with
// admin.ready_requires_upstream, the last probe of some enabled route found
// its upstream reachable.
func (s *Server) NotReady() string {
	select {
	case <-s.ready:
	default:
		return "starting: the listeners are not open yet"
	}
	if s.draining.Load() {
		return "shutting down"
	}
	snap := s.Snapshot()
	if snap.Config.Admin.ReadyRequiresUpstream {
		if ok, n := s.upstreamsReachable(snap); !ok {
			return fmt.Sprintf("no upstream is reachable (%d enabled routes; admin.ready_requires_upstream is on)", n)
		}
	}
	return ""
}

// AdminToken returns the admin token of the snapshot in force, nil when
// the config has no admin.token_file.
func (s *Server) AdminToken() []byte { return s.Snapshot().adminToken }

// Fleet returns admin.fleet of the snapshot in force.
func (s *Server) Fleet() []string { return s.Snapshot().Config.Admin.Fleet }

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
	srv := admin.NewServer(s, admin.Options{Metrics: s.metrics, Pprof: ac.Pprof, Public: public})
	s.mu.Lock()
	s.admin = srv
	s.adminAddr = ln.Addr()
	s.mu.Unlock()
	s.log.Info("admin listening", zap.String("listen", ln.Addr().String()), zap.Bool("token", s.AdminToken() != nil))
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin endpoint stopped", zap.Error(err))
		}
	}()
	return nil
}

func (s *Server) stopAdmin() {
	s.mu.Lock()
	srv := s.admin
	s.mu.Unlock()
	if srv == nil {
		return
	}
	_ = srv.Shutdown()
}
