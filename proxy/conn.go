package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/splice"
	"github.com/spacegate/spacegate/tlsconf"
)

// Phase is where a connection is in its life. Phases only move forward:
// PhaseNegotiate -> PhaseHandshake -> PhaseCheck -> PhaseDial -> PhaseSplice,
// and any phase may end in PhaseClosed.
type Phase uint8

const (
	PhaseNegotiate Phase = iota // reading the PostgreSQL start-up packets before TLS
	PhaseHandshake              // TLS handshake and, for PostgreSQL, the StartupMessage inside it
	PhaseCheck                  // source address, client certificate, route and limits
	PhaseDial                   // connecting to the upstream
	PhaseSplice                 // bytes flow both ways
	PhaseClosed
)

func (p Phase) String() string {
	switch p {
	case PhaseNegotiate:
		return "negotiate"
	case PhaseHandshake:
		return "handshake"
	case PhaseCheck:
		return "check"
	case PhaseDial:
		return "dial"
	case PhaseSplice:
		return "splice"
	case PhaseClosed:
		return "closed"
	}
	return "unknown"
}

// errCancelHandled ends a connection that carried a CancelRequest: it was
// forwarded (or dropped) and the client gets no answer, as from PostgreSQL.
var errCancelHandled = errors.New("cancel request handled")

// conn is one client connection. serve owns it until it hands the session
// to the engine (splice) or to the engine's graceful close (finish); done,
// called once at the very end, releases what it holds.
type conn struct {
	srv   *Server
	snap  *Snapshot // read once at accept: one connection, one configuration
	lis   *Listener
	route *Route // nil until known: at once on an unshared listener, else from SNI
	sni   string
	id    string
	start time.Time
	peer  netip.AddrPort // the TCP peer: the client, or a load balancer
	src   netip.AddrPort // the client: peer, or what a trusted PROXY header says

	nc       net.Conn // the accepted TCP connection
	client   net.Conn // what the client speaks through: nc, or the TLS conn over it
	tlsConn  *tls.Conn
	fd       *splice.Conn    // under tlsConn: how the engine takes the socket over
	upstream net.Conn        // set by setUpstream only
	upFd     *splice.Conn    // under upstream when that is TLS
	sess     *splice.Session // set, under mu, once the engine runs the session

	// chain is the client's certificate chain, kept to check it again
	// after a reload. Set before the connection is listed as admitted.
	chain []*x509.Certificate

	// mu guards aborted, cutReason, the timer, the dial and the upstream
	// and session as seen by abort and cut, which other goroutines (drain,
	// reload, expiry) call.
	mu         sync.Mutex
	aborted    bool
	cutReason  *Refusal
	expiry     *time.Timer        // cuts the connection when its certificate expires
	dialing    bool               // listed for the dial: a cut is seen by the serve goroutine
	dialCancel context.CancelFunc // while the upstream is dialled
	ended      atomic.Bool        // done has run (or abandon has given up on it)

	phase     Phase
	early     *Refusal // found before TLS, told after it
	identity  tlsconf.Identity
	ruleID    string
	pgUser    string
	pgDB      string
	startup   []byte // the PostgreSQL StartupMessage to forward, unchanged
	cancel    bool
	admitted  bool          // holds connection-limit slots
	pend      *pendingEntry // in the pending pool: accepted, not yet admitted; nil after
	released  bool          // release has run
	bytesUp   int64
	bytesDown int64
	endErr    error       // why the engine ended the session
	lost      atomic.Bool // its upstream closed it without a word (upstreamLost)
}

// serve runs the connection to its end. It never returns an error: the
// outcome goes to the client, the audit log and the metrics. The end may
// come after serve returns: a session ends when the engine says so
// (sessionEnded), a told refusal when its graceful close has (finish).
func (c *conn) serve(ctx context.Context) {
	err := c.run(ctx)
	if err == errHandedOff {
		return
	}
	if c.pend != nil && c.pend.evicted.Load() {
		err = evictedRefusal() // its socket was closed under it: that is why it failed
	}
	c.finish(err)
}

// run is the life of a connection as a list of steps.
func (c *conn) run(ctx context.Context) error {
	limits := c.snap.Config.Limits
	// Every step before the splice shares one deadline, so a client that
	// trickles bytes cannot hold a slot longer than the handshake timeout.
	if err := c.nc.SetDeadline(c.start.Add(limits.HandshakeTimeout)); err != nil {
		return err
	}
	first, err := c.readFirstByte()
	if err != nil {
		return err
	}
	switch c.lis.Protocol {
	case config.ProtocolPostgres:
		err = c.startPostgres(ctx, first)
	case config.ProtocolRedis:
		err = c.startRedis(ctx, first)
	default:
		err = fmt.Errorf("listener %s has unknown protocol %q", c.lis.Addr, c.lis.Protocol)
	}
	if err != nil {
		return err
	}
	c.phase = PhaseCheck
	c.advance(progressChecking)
	if err := c.admit(); err != nil {
		return err
	}
	if c.leavePending() {
		return evictedRefusal()
	}
	c.srv.hook(c, hookAdmitted)
	c.phase = PhaseDial
	// Listed first, then compared with the snapshot in force: a reload that
	// swapped in between either finds this connection listed and checks it,
	// or is seen here. Either way no connection escapes a re-check.
	c.mu.Lock()
	c.dialing = true // a cut from here on is told, not a close
	c.mu.Unlock()
	c.srv.conns.update(c)
	if cur := c.srv.Snapshot(); cur != c.snap {
		if ref := c.recheck(cur); ref != nil {
			return ref
		}
	}
	if err := c.dialUpstream(ctx); err != nil {
		return err
	}
	if c.startup != nil {
		if _, err := c.upstream.Write(c.startup); err != nil {
			return refuse(ReasonUpstreamUnavailable, upstreamDownMsg(c.route), fmt.Errorf("writing StartupMessage upstream: %w", err))
		}
	}
	// The client is trusted from here on: no deadline on an idle session.
	if err := c.nc.SetDeadline(time.Time{}); err != nil {
		return err
	}
	c.phase = PhaseSplice
	m := c.srv.metrics
	m.Established.WithLabelValues(c.route.Name).Inc()
	m.Handshake.WithLabelValues(c.route.Name).Observe(time.Since(c.start).Seconds())
	m.Active.WithLabelValues(c.route.Name).Inc()
	observeClientCert(m, c.route.Name, c.identity)
	c.srv.conns.update(c)
	c.armExpiry()
	return c.splice()
}

// leavePending takes the connection off the pending pool, and reports
// whether the pool had evicted it meanwhile.
func (c *conn) leavePending() (evicted bool) {
	if c.pend == nil {
		return false
	}
	e := c.pend
	c.pend = nil
	return c.srv.pool.remove(e)
}

// advance records the connection's progress in the pending pool.
func (c *conn) advance(p progress) {
	if c.pend != nil {
		c.srv.pool.advance(c.pend, p)
	}
}

// evictedRefusal ends a connection evicted from a full pending pool. Its
// socket is closed: nothing more can be told.
func evictedRefusal() *Refusal {
	return &Refusal{Reason: ReasonPendingEvicted, Msg: "evicted from the full pending pool, having made the least progress", quiet: true}
}

// armExpiry schedules the cut of the connection at its certificate's
// NotAfter: a certificate that expires while its session is open ends it.
func (c *conn) armExpiry() {
	na := c.identity.NotAfter
	if na.IsZero() {
		return
	}
	t := time.AfterFunc(time.Until(na), func() { c.cut(expiryRefusal(c.identity.Serial, na)) })
	c.mu.Lock()
	c.expiry = t
	c.mu.Unlock()
}

// readFirstByte reads the connection's first byte, after a PROXY header if
// the peer may send one and does.
func (c *conn) readFirstByte() (byte, error) {
	var b [1]byte
	if c.pend != nil {
		if err := waitReadable(c.nc); err != nil {
			return 0, err
		}
		c.advance(progressStarted)
	}
	if _, err := io.ReadFull(c.nc, b[:]); err != nil {
		return 0, err
	}
	if !mayStartProxyHeader(b[0]) {
		return b[0], nil
	}
	src, ok, err := readProxyHeader(c.nc, b[0])
	if errors.Is(err, errNotProxyHeader) {
		// No PROXY header: the first byte is the protocol's. Neither 'P' nor
		// '\r' can start a TLS record or a start-up packet of a valid length,
		// so the protocol's front end refuses it, in its own words (a Redis
		// client typing PING in plaintext is told to use TLS); the bytes
		// the header check consumed after it are not needed for that.
		return b[0], nil
	}
	if err != nil {
		return 0, err
	}
	if !c.snap.trustedProxy(c.peer.Addr()) {
		// Refused after TLS, like every check, so that the client can read
		// why: an answer to its SSLRequest would be hidden by libpq.
		c.early = refuse(ReasonProtocolViolation,
			fmt.Sprintf("PROXY protocol header from %s, which is not in proxy_protocol.trusted_cidrs", c.peer.Addr()), nil)
	} else if ok {
		c.src = src
		if err := c.screenProxied(); err != nil {
			return 0, err
		}
	}
	if _, err := io.ReadFull(c.nc, b[:]); err != nil {
		return 0, err
	}
	return b[0], nil
}

// screenProxied applies to a client behind a trusted proxy, once its
// header has named it, what accept applies to the others: its source's
// bound on pending connections, and a close before TLS if no route of the
// listener allows it while the pool is under pressure or its courtesy is
// spent.
func (c *conn) screenProxied() error {
	lim := c.snap.Config.Limits
	if c.pend != nil {
		for _, v := range c.srv.pool.setSource(c.pend, c.src.Addr(), lim.MaxPendingPerSource) {
			closeEvicted(v)
		}
	}
	src := c.src.Addr()
	if (c.srv.pool.pressure(lim.MaxPending) || c.srv.refusals.courtesySpent(src)) && !c.lis.allows(src) {
		return &Refusal{Reason: ReasonIPNotAllowedPreTLS, quiet: true,
			Msg: fmt.Sprintf("source address %s is allowed by no route of %s; closed before TLS under load", src, c.lis.Addr)}
	}
	return nil
}

// routeName names the connection's route for logs and metrics before and
// after it is known.
func (c *conn) routeName() string {
	if c.route != nil {
		return c.route.Name
	}
	if !c.lis.Shared() {
		return c.lis.Routes[0].Name
	}
	return "unrouted"
}

// startTLS runs the server side of the TLS handshake over nc, whose first
// bytes may already have been read (prefix). On a shared listener the
// route is chosen by the ClientHello's server name; an unknown name still
// completes the handshake, with the first route's certificate, so that the
// client can be told which names are served.
func (c *conn) startTLS(ctx context.Context, prefix []byte) error {
	c.phase = PhaseHandshake
	raw, err := c.peekClientHello(prefix)
	if err != nil {
		return err
	}
	// Called once the whole ClientHello has arrived: the progress that
	// tells a real client from a socket that trickles or stalls.
	cfg := &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c.advance(progressHello)
		if !c.lis.Shared() {
			return c.route.TLS, nil
		}
		c.sni = hello.ServerName
		if c.route = c.lis.Route(hello.ServerName); c.route != nil {
			return c.route.TLS, nil
		}
		return c.lis.Routes[0].TLS, nil
	}}
	c.fd = splice.Wrap(raw) // so that the engine can take the socket over
	tc := tls.Server(c.fd, cfg)
	c.tlsConn = tc
	if err := tc.HandshakeContext(ctx); err != nil {
		// Nothing can be told to a client whose TLS failed; the log says why.
		return &Refusal{Reason: ReasonHandshakeFailed, Msg: "TLS handshake failed", Err: err, quiet: true}
	}
	c.client = tc
	if c.route == nil {
		return c.unknownServerName()
	}
	return nil
}

// unknownServerName refuses a client whose SNI no route of a shared
// listener serves.
func (c *conn) unknownServerName() error {
	names := strings.Join(c.lis.Names(), ", ")
	if c.sni == "" {
		return &Refusal{Reason: ReasonUnknownServerName,
			Msg:  "no server name (SNI) was sent, and this address serves several databases: " + names,
			Hint: "connect with one of these host names (libpq sends it unless sslsni=0; an IP address as host sends none)"}
	}
	return &Refusal{Reason: ReasonUnknownServerName,
		Msg:  fmt.Sprintf("no database is served under the name %q at this address; it serves: %s", c.sni, names),
		Hint: "check the host name in the connection string"}
}

// setUpstream records the upstream connection, unless the connection has
// been aborted meanwhile, in which case it closes up.
func (c *conn) setUpstream(up net.Conn) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		up.Close()
		return net.ErrClosed
	}
	c.upstream = up
	return nil
}

// abort closes both sockets from another goroutine, which ends every
// read and write of the connection whatever state it is in: a session is
// aborted on the engine, a dial cancelled.
func (c *conn) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.aborted = true
	if c.sess != nil {
		c.sess.Abort()
		return
	}
	if c.dialCancel != nil {
		c.dialCancel()
	}
	c.nc.Close()
	if c.upstream != nil {
		c.upstream.Close()
	}
}

// finish ends a connection that never reached the engine's session: it
// closes the upstream and tells the client about a refusal. A told refusal
// is closed gracefully by the engine (the notice, FIN, the client's input
// drained for a bound, then close), and done runs when that has ended;
// anything else is closed at once.
func (c *conn) finish(err error) {
	var ref *Refusal
	if err != nil && !errors.As(err, &ref) && !errors.Is(err, errCancelHandled) {
		ref = c.classify(err)
	}
	if c.upstream != nil {
		c.upstream.Close()
	}
	if ref == nil || ref.quiet {
		if c.client != nil {
			c.client.Close()
		}
		c.nc.Close()
		c.done(ref)
		return
	}
	var notice []byte
	if c.lis.Protocol == config.ProtocolRedis {
		c.tellRedis(ref) // a dialog: each command the client sends is answered
	} else if cut := c.cutRefusal(); cut == ref {
		notice = c.cutNotice(ref) // cut while dialling
	} else {
		notice = pgError(ref)
	}
	side := splice.Side{Conn: c.fd, TLS: c.tlsConn}
	if c.tlsConn == nil || c.client != c.tlsConn {
		side = splice.Side{Conn: splice.Wrap(c.nc)} // refused in plaintext
	}
	if err := c.srv.engine.Close(side, notice, func() { c.closed(ref) }); err != nil {
		side.Conn.Close()
		c.nc.Close()
		c.done(ref)
	}
}

// closed is the done of finish's graceful close.
func (c *conn) closed(ref *Refusal) {
	defer c.recoverPanic()
	c.done(ref)
}

// done is the end of every connection, once its sockets are closed: it
// releases what the connection holds, writes its audit line and metrics,
// and lets the server's drain count it out. It runs once.
func (c *conn) done(ref *Refusal) {
	if !c.ended.CompareAndSwap(false, true) {
		return
	}
	defer c.srv.wg.Done()
	c.mu.Lock()
	c.aborted = true // late cuts and expiry find nothing to do
	if c.expiry != nil {
		c.expiry.Stop()
	}
	c.mu.Unlock()
	c.release()
	c.audit(ref) // before PhaseClosed: a refusal's line names the phase it failed in
	c.phase = PhaseClosed
}

// release gives back what the connection holds in the server's
// bookkeeping: its registry entry, its pending or admitted slots, its
// place in the active gauge. It runs once, on the goroutine that owns the
// connection; abandon may call it again after a panic in finish.
func (c *conn) release() {
	if c.released {
		return
	}
	c.released = true
	c.srv.conns.remove(c)
	c.leavePending()
	if c.admitted {
		c.srv.limits.release(c.route.Name, c.src.Addr(), c.identity.Serial)
	}
	if c.phase == PhaseSplice {
		c.srv.metrics.Active.WithLabelValues(c.route.Name).Dec()
	}
}

// classify turns an unexpected error before the splice into a Refusal.
func (c *conn) classify(err error) *Refusal {
	var ne net.Error
	switch {
	case c.phase == PhaseSplice:
		return nil // the session ran; its end is not a refusal
	case errors.As(err, &ne) && ne.Timeout():
		return &Refusal{Reason: ReasonHandshakeFailed, Msg: "timed out waiting for the client", Err: err, quiet: true}
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed):
		return &Refusal{Reason: ReasonHandshakeFailed, Msg: "client closed the connection during the handshake", Err: err, quiet: true}
	}
	return &Refusal{Reason: ReasonProtocolViolation, Msg: "connection failed", Err: err, quiet: true}
}

// audit writes the one log line of this connection and counts its outcome.
func (c *conn) audit(ref *Refusal) {
	m := c.srv.metrics
	fields := make([]zap.Field, 0, 20)
	fields = append(fields,
		zap.String("id", c.id),
		zap.String("route", c.routeName()),
		zap.String("source", c.src.String()),
		zap.Duration("duration", time.Since(c.start)),
	)
	if c.peer != c.src {
		fields = append(fields, zap.String("peer", c.peer.String()))
	}
	if c.sni != "" {
		fields = append(fields, zap.String("sni", c.sni))
	}
	if c.ruleID != "" {
		fields = append(fields, zap.String("ip_rule", c.ruleID))
	}
	if c.identity.Serial != "" {
		fields = append(fields,
			zap.String("cert_subject", c.identity.Subject),
			zap.String("cert_serial", c.identity.Serial),
			zap.Time("cert_not_after", c.identity.NotAfter))
	}
	if c.pgUser != "" {
		fields = append(fields, zap.String("pg_user", c.pgUser), zap.String("pg_database", c.pgDB))
	}
	cut := c.cutRefusal()
	switch {
	case cut != nil:
		m.Cut.WithLabelValues(c.routeName(), cut.Reason.String()).Inc()
		m.Closed.WithLabelValues(c.routeName()).Inc()
		fields = append(fields, zap.String("verdict", "cut"), zap.String("reason", cut.Reason.String()),
			zap.String("message", cut.Msg), zap.Int64("bytes_up", c.bytesUp), zap.Int64("bytes_down", c.bytesDown))
		c.srv.log.Warn("connection cut", fields...)
	case c.cancel:
		transport := "plaintext"
		if c.tlsConn != nil {
			transport = "tls"
		}
		fields = append(fields, zap.String("verdict", "cancel"), zap.String("transport", transport))
		if ref != nil {
			fields = append(fields, zap.String("reason", ref.Reason.String()))
		}
		c.srv.log.Info("cancel request", fields...)
	case ref != nil:
		m.Refused.WithLabelValues(c.routeName(), ref.Reason.String()).Inc()
		fields = append(fields, zap.String("verdict", "refused"), zap.String("reason", ref.Reason.String()),
			zap.String("phase", c.phase.String()), zap.String("message", ref.Msg))
		if ref.Err != nil {
			fields = append(fields, zap.Error(ref.Err))
		}
		if c.srv.refusals.note(c.src.Addr(), ref.Reason, !c.lis.allows(c.src.Addr())) {
			c.srv.log.Warn("connection refused", fields...)
		}
	default:
		m.Closed.WithLabelValues(c.routeName()).Inc()
		m.Duration.WithLabelValues(c.routeName()).Observe(time.Since(c.start).Seconds())
		m.Bytes.WithLabelValues(c.routeName(), "upstream").Add(float64(c.bytesUp))
		m.Bytes.WithLabelValues(c.routeName(), "client").Add(float64(c.bytesDown))
		fields = append(fields, zap.String("verdict", "closed"),
			zap.Int64("bytes_up", c.bytesUp), zap.Int64("bytes_down", c.bytesDown))
		if c.lost.Load() {
			m.UpstreamLost.WithLabelValues(c.routeName()).Inc()
			fields = append(fields, zap.Bool("upstream_lost", true),
				zap.Bool("client_told", errors.Is(c.endErr, splice.ErrUpstreamLost)))
			if c.endErr != nil {
				fields = append(fields, zap.Error(c.endErr))
			}
			c.srv.log.Warn("connection closed: the upstream closed it unexpectedly", fields...)
			return
		}
		c.srv.log.Info("connection closed", fields...)
	}
}

// prefixConn replays bytes already read from a connection before reading
// more from it: the first byte of a direct TLS ClientHello, peeked to tell
// it from a PostgreSQL start-up packet.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// SyscallConn gives the engine the socket to take over, once the bytes
// replayed have been read: before that the socket alone would lose them.
func (p *prefixConn) SyscallConn() (syscall.RawConn, error) {
	if len(p.prefix) > 0 {
		return nil, errors.New("bytes already read from the socket are still to be replayed")
	}
	sc, ok := p.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

// CloseWrite half-closes the underlying TCP connection.
func (p *prefixConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
