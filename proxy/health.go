package proxy

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/spacegate/spacegate/admin"
)

// upstreamProbeInterval is how often the gate connects to each upstream to
// tell whether it is reachable, so that "upstream down" shows in status and
// metrics even while no client is trying. A TCP connect that sends nothing
// is invisible to PostgreSQL's log (backend_startup.c says such port checks
// are common and stays quiet) and to Redis.
const upstreamProbeInterval = 10 * time.Second

// healthState holds the last probe per route. Safe for concurrent use.
type healthState struct {
	mu      sync.Mutex
	byRoute map[string]admin.UpstreamHealth
}

func (h *healthState) get(route string) (admin.UpstreamHealth, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.byRoute[route]
	return v, ok
}

func (h *healthState) set(route string, v admin.UpstreamHealth) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byRoute == nil {
		h.byRoute = map[string]admin.UpstreamHealth{}
	}
	h.byRoute[route] = v
}

// probeUpstreams probes every route's upstream now and then every interval
// until ctx ends.
func (s *Server) probeUpstreams(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		snap := s.Snapshot()
		var wg sync.WaitGroup
		for _, r := range snap.Routes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.probe(ctx, r, snap.Config.Limits.UpstreamConnectTimeout)
			}()
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) probe(ctx context.Context, r *Route, timeout time.Duration) {
	d := net.Dialer{Timeout: timeout}
	nc, err := d.DialContext(ctx, "tcp", r.Upstream)
	if ctx.Err() != nil || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
		return // shutting down, or the gate's own fd limit: not a verdict on the upstream
	}
	h := admin.UpstreamHealth{Reachable: err == nil, CheckedAt: time.Now().UTC()}
	if err != nil {
		h.Error = probeError(err)
		s.metrics.UpstreamUp.WithLabelValues(r.Name).Set(0)
	} else {
		nc.Close()
		s.metrics.UpstreamUp.WithLabelValues(r.Name).Set(1)
	}
	s.health.set(r.Name, h)
}

// probeError names a dial failure in words that carry no address.
func probeError(err error) string {
	var se syscall.Errno
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return "connect timed out"
	case errors.As(err, &dnsErr):
		return "host name does not resolve"
	case errors.As(err, &se):
		return se.Error()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "connect timed out"
	}
	return "connect failed"
}
