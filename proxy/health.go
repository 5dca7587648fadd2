package proxy

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/spacegate/spacegate/admin"
)

// The gate connects to each upstream to tell whether it is reachable, so
// that "upstream down" shows in status, metrics and (with
// admin.ready_requires_upstream) /readyz even while no client is trying. A
// TCP connect that sends nothing is invisible to PostgreSQL's log
// (backend_startup.c says such port checks are common and stays quiet) and
// to Redis.
//
// An upstream that answers is probed every upstreamProbeInterval. One that
// does not is probed again after upstreamRetryMin, doubling up to
// upstreamRetryMax, so that its return shows within about a second (the
// database restarting is the common case, and the one a client retries)
// while a long outage costs one connect a second per route.
const (
	upstreamProbeInterval = 10 * time.Second
	upstreamRetryMin      = 250 * time.Millisecond
	upstreamRetryMax      = time.Second
)

// probeTiming is the cadence of upstream probes; the zero value means the
// constants above. Tests set Server.probeTiming.
type probeTiming struct {
	every    time.Duration // while the upstream answers
	retryMin time.Duration // first retry after a failed probe
	retryMax time.Duration // retries double up to this
}

func (p probeTiming) withDefaults() probeTiming {
	if p.every <= 0 {
		p.every = upstreamProbeInterval
	}
	if p.retryMin <= 0 {
		p.retryMin = upstreamRetryMin
	}
	if p.retryMax <= 0 {
		p.retryMax = upstreamRetryMax
	}
	p.retryMin = min(p.retryMin, p.retryMax)
	return p
}

// retryAfter is the wait before the next probe of an upstream that failed
// failures probes in a row (failures >= 1).
func (p probeTiming) retryAfter(failures int) time.Duration {
	d := p.retryMin
	for i := 1; i < failures && d < p.retryMax; i++ {
		d *= 2
	}
	return min(d, p.retryMax)
}

// dialTimeout bounds one probe: the route's connect timeout while the
// upstream answers, so that a slow one is not called down; while it does
// not, no longer than retryMax, so that a black-holed upstream (connects
// that time out rather than fail) is asked again as often as a refusing
// one and its return shows as soon.
func (p probeTiming) dialTimeout(connectTimeout time.Duration, failures int) time.Duration {
	if failures == 0 {
		return connectTimeout
	}
	return min(connectTimeout, p.retryMax)
}

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

// upstreamsReachable reports whether the last probe of some enabled route
// of snap found its upstream reachable, and how many enabled routes there
// are. A route not probed yet counts as unreachable.
func (s *Server) upstreamsReachable(snap *Snapshot) (reachable bool, routes int) {
	for _, r := range snap.Routes {
		if !r.IsEnabled() {
			continue
		}
		routes++
		if h, ok := s.health.get(r.Name); ok && h.Reachable {
			reachable = true
		}
	}
	return reachable, routes
}

// probeState is the schedule of one route's probes, owned by the
// goroutine of probeUpstreams.
type probeState struct {
	upstream string    // the address probed; a reload that changes it starts over
	next     time.Time // when the next probe is due
	failures int       // failed probes in a row
	inFlight bool
}

// probeResult is what a probe goroutine hands back: verdict is false when
// the probe said nothing about the upstream (shutdown, or the gate's own
// fd limit).
type probeResult struct {
	route, upstream string
	started         time.Time
	verdict, up     bool
	err             string // why not up, in probeError's words
}

// probeUpstreams probes every route's upstream until ctx ends, each on its
// own schedule (see upstreamProbeInterval). One goroutine schedules; each
// probe runs in a goroutine of its own, at most one per route at a time,
// so a slow connect delays only its route's next probe and the goroutines
// are bounded by the routes. The snapshot is read at every wake-up (at
// least every retryMax), so routes added by a reload are probed within a
// second.
func (s *Server) probeUpstreams(ctx context.Context) {
	timing := s.probeTiming.withDefaults()
	states := map[string]*probeState{}
	results := make(chan probeResult)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		snap := s.Snapshot()
		now := time.Now()
		wake := now.Add(timing.retryMax)
		live := make(map[string]bool, len(snap.Routes))
		for _, r := range snap.Routes {
			live[r.Name] = true
			st := states[r.Name]
			if st == nil || (st.upstream != r.Upstream && !st.inFlight) {
				st = &probeState{upstream: r.Upstream, next: now}
				states[r.Name] = st
			}
			if st.inFlight {
				continue
			}
			if !now.Before(st.next) {
				st.inFlight = true
				timeout := timing.dialTimeout(snap.Config.Limits.UpstreamConnectTimeout, st.failures)
				wg.Add(1)
				go func() {
					defer wg.Done()
					res := s.probe(ctx, r, timeout)
					res.started = now
					select {
					case results <- res:
					case <-ctx.Done():
					}
				}()
				continue
			}
			if st.next.Before(wake) {
				wake = st.next
			}
		}
		for name, st := range states {
			if !live[name] && !st.inFlight {
				delete(states, name)
			}
		}
		timer.Reset(time.Until(wake))
		select {
		case <-ctx.Done():
			return
		case res := <-results:
			st := states[res.route]
			if st == nil {
				continue
			}
			st.inFlight = false
			switch {
			case !res.verdict:
				st.next = res.started.Add(timing.retryMax)
			case res.up:
				if st.failures > 0 {
					s.log.Info("upstream reachable again", zap.String("route", res.route), zap.String("upstream", res.upstream), zap.Int("failed_probes", st.failures))
				}
				st.failures = 0
				st.next = res.started.Add(timing.every)
			default:
				if st.failures == 0 {
					s.log.Warn("upstream unreachable", zap.String("route", res.route), zap.String("upstream", res.upstream), zap.String("error", res.err))
				}
				st.failures++
				st.next = res.started.Add(timing.retryAfter(st.failures))
			}
		case <-timer.C:
		}
	}
}

// probe connects to r's upstream once, within timeout, and records the
// outcome in the health state and the upstream_up metric.
func (s *Server) probe(ctx context.Context, r *Route, timeout time.Duration) probeResult {
	res := probeResult{route: r.Name, upstream: r.Upstream}
	d := net.Dialer{Timeout: timeout}
	nc, err := d.DialContext(ctx, "tcp", r.Upstream)
	if ctx.Err() != nil || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
		if nc != nil {
			nc.Close()
		}
		return res // shutting down, or the gate's own fd limit: not a verdict on the upstream
	}
	res.verdict, res.up = true, err == nil
	h := admin.UpstreamHealth{Reachable: err == nil, CheckedAt: time.Now().UTC()}
	if err != nil {
		h.Error = probeError(err)
		res.err = h.Error
		s.metrics.UpstreamUp.WithLabelValues(r.Name).Set(0)
	} else {
		nc.Close()
		s.metrics.UpstreamUp.WithLabelValues(r.Name).Set(1)
	}
	s.health.set(r.Name, h)
	return res
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
