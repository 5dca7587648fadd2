package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/filewatch"
	"github.com/spacegate/spacegate/internal/splice"
)

// Options configure a Server.
type Options struct {
	// Config is the loaded configuration; required.
	Config *config.Config
	// Logger receives the audit and operational log. If nil, nothing is logged.
	Logger *zap.Logger
	// Metrics receives the metrics. If nil, admin.NewMetrics() is used.
	Metrics *admin.Metrics
	// Now returns the current time for certificate checks. If nil, time.Now.
	Now func() time.Time
	// Notify, if set, is told of the server's state changes: "ready" once
	// every listener accepts and after each reload, "reloading" before one,
	// "stopping" when shutdown begins (for sd_notify). It must not block.
	Notify func(state string)
	// PollInterval is how often the config's files are checked for changes
	// that file events missed (network file systems). Zero means 30s;
	// negative turns polling off.
	PollInterval time.Duration
	// Name is the replica's name in /v1/status and /v1/fleet. If empty,
	// the host name.
	Name string
	// GoroutineSplice runs every session on two goroutines, the engine's
	// portable implementation (splice.Options.Portable), rather than on its
	// event loops: for comparison and tests, and what other systems than
	// Linux get anyway.
	GoroutineSplice bool
}

// Server is a running gate: one listener per route, the admin endpoint, and
// the live connections. Create it with NewServer and start it with Run; a
// Server runs once.
type Server struct {
	log      *zap.Logger
	metrics  *admin.Metrics
	now      func() time.Time
	snap     atomic.Pointer[Snapshot]
	conns    registry
	limits   limiter
	health   healthState
	pending  atomic.Int64 // accepted connections not yet admitted or refused: pool's size
	pool     pendingPool
	refusals *refusalLog
	wg       sync.WaitGroup

	notify       func(string)
	name         string     // the replica's, of Options.Name
	reloadMu     sync.Mutex // one reload at a time
	watcher      *filewatch.Watcher
	pollInterval time.Duration

	mu        sync.Mutex
	listeners map[string]net.Listener // by listen address as configured
	acceptCtx context.Context         // while running: the context of accept loops
	accepting sync.WaitGroup          // accept loops
	admin     *admin.Server
	adminAddr net.Addr

	ready    chan struct{} // closed once every listener is open
	draining atomic.Bool

	goroutineSplice bool
	engine          *splice.Engine // while running: the sessions, and the graceful close of refusals

	testHook    func(*conn, hookPoint) // set by tests before Run; see hook
	probeTiming probeTiming            // set by tests before Run; zero: the defaults
}

// NewServer loads every file the config names and returns a Server ready to
// Run. It fails closed: any problem in the config or its files is an error.
func NewServer(opts Options) (*Server, error) {
	if opts.Config == nil {
		return nil, errors.New("proxy: Options.Config is nil")
	}
	snap, err := Build(opts.Config, 1)
	if err != nil {
		return nil, err
	}
	s := &Server{
		log:          opts.Logger,
		metrics:      opts.Metrics,
		now:          opts.Now,
		listeners:    map[string]net.Listener{},
		ready:        make(chan struct{}),
		pollInterval: opts.PollInterval,
		notify:       opts.Notify,

		goroutineSplice: opts.GoroutineSplice,
	}
	if s.notify == nil {
		s.notify = func(string) {}
	}
	if s.name = opts.Name; s.name == "" {
		s.name, _ = os.Hostname()
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.metrics == nil {
		s.metrics = admin.NewMetrics()
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.pool.count = &s.pending
	s.refusals = newRefusalLog(s.log)
	s.conns.init()
	s.snap.Store(snap)
	observeSnapshot(s.metrics, snap)
	s.warnStaleCRLs(snap)
	return s, nil
}

// Snapshot returns the configuration in force.
func (s *Server) Snapshot() *Snapshot { return s.snap.Load() }

// Ready is closed once every listener accepts connections.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// AdminAddr returns the admin endpoint's address once Ready, or nil.
func (s *Server) AdminAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.adminAddr
}

// Run opens the listeners and serves until ctx is cancelled, then drains:
// it stops accepting, lets live connections finish for up to the drain
// timeout, closes those left, and returns nil. A listener that cannot be
// opened is an error naming its route.
func (s *Server) Run(ctx context.Context) error {
	snap := s.Snapshot()
	// The watcher starts before the listeners so that every change from
	// here on is seen. (A change in the moment between NewServer reading
	// the files and this line is seen at the next change or SIGHUP.)
	if err := s.startWatching(snap); err != nil {
		return err
	}
	if s.watcher != nil {
		defer s.watcher.Close()
	}
	if err := s.openListeners(snap); err != nil {
		s.closeListeners()
		return err
	}
	if err := s.startAdmin(snap.Config.Admin); err != nil {
		s.closeListeners()
		return err
	}
	eng, err := s.startEngine()
	if err != nil {
		s.closeListeners()
		s.stopAdmin()
		return err
	}
	s.engine = eng
	defer eng.Stop() // after the drain: every session and close has ended
	connCtx, cancelConns := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelConns()
	s.mu.Lock()
	s.acceptCtx = connCtx
	for addr, ln := range s.listeners {
		s.startAccepting(addr, ln)
	}
	s.mu.Unlock()
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		if s.watcher != nil {
			s.watch(watchCtx)
		}
	}()
	refusalsDone := make(chan struct{})
	go func() {
		defer close(refusalsDone)
		s.refusals.run(watchCtx)
	}()
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		s.probeUpstreams(watchCtx)
	}()
	s.logWarnings(snap)
	close(s.ready)
	s.notify("ready")
	s.log.Info("spacegate serving", zap.Int("routes", len(snap.Routes)), zap.Uint64("generation", snap.Generation))

	<-ctx.Done()
	s.notify("stopping")
	s.draining.Store(true) // /readyz says 503 from here on
	if d := s.Snapshot().Config.Limits.ShutdownDelay; d > 0 {
		// Keep accepting while the load balancer notices: new connections
		// still work, and go elsewhere once it has.
		s.log.Info("shutting down: not ready, still accepting", zap.Duration("shutdown_delay", d))
		time.Sleep(d)
	}
	stopWatch()
	// A reload stuck in a read (a hung network mount) must not hold
	// shutdown: wait for it a bounded time, then go on without it.
	// Clearing acceptCtx below keeps it from opening a listener if it ever
	// ends.
	if s.stopReloads(watchDone, reloadStopTimeout) {
		defer s.reloadMu.Unlock()
	} else {
		s.log.Warn("shutting down: a reload is still running; not waiting for it", zap.Duration("waited", reloadStopTimeout))
	}
	<-probeDone
	<-refusalsDone
	s.mu.Lock()
	s.acceptCtx = nil
	s.mu.Unlock()
	s.closeListeners()
	s.accepting.Wait()
	drain := s.Snapshot().Config.Limits.DrainTimeout
	s.log.Info("draining", zap.Int("connections", s.conns.len()), zap.Duration("timeout", drain))
	if !waitTimeout(&s.wg, drain) {
		n := s.conns.cutAll(&Refusal{Reason: ReasonShutdown, Msg: "the gate is shutting down",
			Hint: "reconnect: another replica, or this one once restarted, will serve you"})
		s.log.Warn("drain timeout: cutting connections", zap.Int("connections", n))
		cancelConns()
		s.wg.Wait()
	}
	s.stopAdmin()
	s.log.Info("spacegate stopped")
	return nil
}

// startAccepting runs an accept loop for ln; s.mu must be held.
func (s *Server) startAccepting(addr string, ln net.Listener) {
	ctx := s.acceptCtx
	if err := deferAccept(ln, s.Snapshot().Config.Limits.HandshakeTimeout); err != nil {
		s.log.Warn("TCP_DEFER_ACCEPT unavailable: idle sockets are accepted at once", zap.String("listen", addr), zap.Error(err))
	}
	s.accepting.Add(1)
	go func() {
		defer s.accepting.Done()
		s.acceptLoop(ctx, addr, ln)
	}()
}

func (s *Server) openListeners(snap *Snapshot) error {
	for _, l := range snap.Listeners {
		ln, err := listen(l.Addr)
		if err != nil {
			names := make([]string, len(l.Routes))
			for i, r := range l.Routes {
				names[i] = strconv.Quote(r.Name)
			}
			return fmt.Errorf("route %s: cannot listen on %s: %w", strings.Join(names, ", "), l.Addr, err)
		}
		s.mu.Lock()
		s.listeners[l.Addr] = ln
		s.mu.Unlock()
		for _, r := range l.Routes {
			s.log.Info("listening", zap.String("route", r.Name), zap.String("protocol", r.Protocol),
				zap.String("listen", ln.Addr().String()), zap.Strings("server_names", r.ServerNames))
		}
	}
	return nil
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ln := range s.listeners {
		ln.Close()
	}
}

// acceptLoop accepts on the listener of one listen address until it is closed. Temporary
// errors (EMFILE, ENFILE, ...) back off and are logged once per streak
// rather than spinning or ending the loop.
func (s *Server) acceptLoop(ctx context.Context, addr string, ln net.Listener) {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if backoff == 0 {
				backoff = 5 * time.Millisecond
				s.log.Error("accept failed; backing off", zap.String("listen", addr), zap.Error(err))
			} else {
				backoff = min(2*backoff, time.Second)
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		s.metrics.Accepted.Inc()
		s.accepted(ctx, addr, nc)
	}
}

// accepted lists a new connection in the pending pool and serves it, or
// closes it before TLS: while the pool is under pressure, or once its
// source has used up the courtesy of refusals told after TLS, a source
// that no route of the listener allows is not worth a handshake.
func (s *Server) accepted(ctx context.Context, addr string, nc net.Conn) {
	snap := s.Snapshot()
	l := snap.Listener(addr)
	if l == nil {
		nc.Close()
		return
	}
	lim := snap.Config.Limits
	peer := addrPort(nc.RemoteAddr())
	e := &pendingEntry{nc: nc, redis: l.Protocol == config.ProtocolRedis}
	var screen func() bool
	if !snap.trustedProxy(peer.Addr()) {
		// Behind a trusted proxy the source is known only from its header
		// (see readFirstByte); here it is the peer.
		src := peer.Addr()
		e.key = sourceKey(src)
		if s.refusals.courtesySpent(src) && !l.allows(src) {
			s.refuseBeforeTLS(l, peer, nc, fmt.Sprintf("refused more than %d times in %s", courtesyRefusals, refusalLogWindow))
			return
		}
		screen = func() bool { return !l.allows(src) }
	}
	victims, refused := s.pool.add(e, lim.MaxPending, lim.MaxPendingPerSource, screen)
	for _, v := range victims {
		closeEvicted(v)
	}
	if refused {
		s.refuseBeforeTLS(l, peer, nc, "pending pool under pressure")
		return
	}
	s.wg.Add(1)
	go s.serveConn(ctx, snap, l, peer, e)
}

// refuseBeforeTLS closes, with a reset, a connection from a source no route
// of l allows, counts it, and logs it within the bounds of refusal logging.
func (s *Server) refuseBeforeTLS(l *Listener, src netip.AddrPort, nc net.Conn, why string) {
	resetClose(nc)
	route := "unrouted"
	if !l.Shared() {
		route = l.Routes[0].Name
	}
	s.metrics.Refused.WithLabelValues(route, ReasonIPNotAllowedPreTLS.String()).Inc()
	if s.refusals.note(src.Addr(), ReasonIPNotAllowedPreTLS, true) {
		s.log.Warn("connection refused", zap.String("route", route), zap.String("source", src.String()),
			zap.String("verdict", "refused"), zap.String("reason", ReasonIPNotAllowedPreTLS.String()),
			zap.String("phase", "accept"), zap.String("message", "source address allowed by no route of "+l.Addr+"; closed before TLS: "+why))
	}
}

// serveConn serves one accepted connection; it owns and closes nc.
func (s *Server) serveConn(ctx context.Context, snap *Snapshot, l *Listener, peer netip.AddrPort, e *pendingEntry) {
	c := &conn{
		srv:   s,
		snap:  snap,
		lis:   l,
		id:    uuid.NewString(),
		start: time.Now(),
		peer:  peer,
		src:   peer,
		nc:    e.nc,
		pend:  e,
	}
	if !l.Shared() {
		c.route = l.Routes[0]
	}
	s.conns.add(c)
	defer func() {
		if v := recover(); v != nil {
			s.notePanic(c, v, nil)
			c.mu.Lock()
			onEngine := c.sess != nil
			c.mu.Unlock()
			if onEngine {
				// The engine took the session before the panic: it ends
				// it, and sessionEnded releases what it holds.
				c.abort()
				return
			}
			c.abandon()
		}
	}()
	c.serve(ctx) // s.wg.Done comes with the connection's end (conn.done)
}

// startEngine starts the engine that runs sessions: on event loops unless
// GoroutineSplice asks for goroutines, or the loops cannot start.
func (s *Server) startEngine() (*splice.Engine, error) {
	o := splice.Options{
		Portable: s.goroutineSplice,
		OnPanic: func(v any, stack []byte) {
			s.metrics.Panics.Inc()
			s.log.Error("panic ending a connection; the gate goes on", zap.Any("panic", v), zap.String("stack", string(stack)))
		},
		OnError: func(err error) {
			s.log.Error("event loop failed: its sessions were closed; new ones go to the other loops", zap.Error(err))
		},
	}
	eng, err := splice.Start(o)
	if err == nil || o.Portable {
		return eng, err
	}
	s.log.Warn("event loops unavailable: sessions are copied by goroutines", zap.Error(err))
	o.Portable = true
	return splice.Start(o)
}

// addrPort returns a connection's address with IPv4-mapped IPv6 addresses
// unmapped, so that 1.2.3.4 matches 1.2.3.0/24 whatever socket accepted it.
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// reloadStopTimeout bounds how long shutdown waits for a reload in progress.
// A reload of a 100k-rule file takes a quarter of a second.
const reloadStopTimeout = 3 * time.Second

// stopReloads waits up to d for the watcher goroutine to end (watchDone)
// and then for a reload in progress to finish, and takes reloadMu. It
// reports whether it took reloadMu; the caller then unlocks it.
func (s *Server) stopReloads(watchDone <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-watchDone:
	case <-t.C:
		return false
	}
	got, abandoned := make(chan struct{}), make(chan struct{})
	go func() {
		s.reloadMu.Lock()
		select {
		case got <- struct{}{}: // the caller holds it now
		case <-abandoned:
			s.reloadMu.Unlock()
		}
	}()
	select {
	case <-got:
		return true
	case <-t.C:
		close(abandoned)
		return false
	}
}

// waitTimeout waits for wg up to d and reports whether it finished.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
