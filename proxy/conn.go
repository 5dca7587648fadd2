package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

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

// conn is one client connection. serve owns it: it closes nc and upstream.
type conn struct {
	srv   *Server
	snap  *Snapshot // read once at accept: one connection, one configuration
	route *Route
	id    string
	start time.Time
	src   netip.AddrPort

	nc       net.Conn // the accepted TCP connection
	client   net.Conn // what the client speaks through: nc, or the TLS conn over it
	tlsConn  *tls.Conn
	upstream net.Conn // set by setUpstream only

	// mu guards aborted and the upstream as seen by abort, which other
	// goroutines (drain, and later reload) call.
	mu      sync.Mutex
	aborted bool

	phase     Phase
	identity  tlsconf.Identity
	ruleID    string
	pgUser    string
	pgDB      string
	startup   []byte // the PostgreSQL StartupMessage to forward, unchanged
	cancel    bool
	admitted  bool // holds a max_connections slot
	bytesUp   int64
	bytesDown int64
}

// serve runs the connection to its end. It never returns an error: the
// outcome goes to the client, the audit log and the metrics.
func (c *conn) serve(ctx context.Context) {
	err := c.run(ctx)
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
	var err error
	switch c.route.Protocol {
	case ProtocolPostgres:
		err = c.startPostgres(ctx)
	case ProtocolRedis:
		err = c.startRedis(ctx)
	default:
		err = fmt.Errorf("route %q has unknown protocol %q", c.route.Name, c.route.Protocol)
	}
	if err != nil {
		return err
	}
	c.phase = PhaseCheck
	if err := c.admit(); err != nil {
		return err
	}
	c.phase = PhaseDial
	if err := c.dialUpstream(ctx); err != nil {
		return err
	}
	if c.startup != nil {
		if _, err := c.upstream.Write(c.startup); err != nil {
			return refuse(ReasonUpstreamUnavailable, c.upstreamDownMsg(), fmt.Errorf("writing StartupMessage upstream: %w", err))
		}
	}
	// The client is trusted from here on: no deadline on an idle session.
	if err := c.nc.SetDeadline(time.Time{}); err != nil {
		return err
	}
	c.phase = PhaseSplice
	c.srv.metrics.established.WithLabelValues(c.route.Name).Inc()
	c.srv.metrics.handshake.WithLabelValues(c.route.Name).Observe(time.Since(c.start).Seconds())
	c.srv.metrics.active.WithLabelValues(c.route.Name).Inc()
	c.srv.conns.update(c)
	defer c.srv.metrics.active.WithLabelValues(c.route.Name).Dec()
	return c.splice()
}

// startTLS runs the server side of the TLS handshake over nc, whose first
// bytes may already have been read (prefix).
func (c *conn) startTLS(ctx context.Context, prefix []byte) error {
	c.phase = PhaseHandshake
	raw := c.nc
	if len(prefix) > 0 {
		raw = &prefixConn{Conn: c.nc, prefix: prefix}
	}
	tc := tls.Server(raw, c.route.TLS)
	c.tlsConn = tc
	if err := tc.HandshakeContext(ctx); err != nil {
		// Nothing can be told to a client whose TLS failed; the log says why.
		return &Refusal{Reason: ReasonHandshakeFailed, Msg: "TLS handshake failed", Err: err, quiet: true}
	}
	c.client = tc
	return nil
}

// checkSource checks the source address against the route's IP rules.
func (c *conn) checkSource() error {
	id, ok := c.route.Matcher.Lookup(c.src.Addr())
	if !ok {
		return &Refusal{
			Reason: ReasonIPNotAllowed,
			Msg:    fmt.Sprintf("source address %s is not allowed for route %s", c.src.Addr(), c.route.Name),
			Hint:   "ask the operator to add an IP rule for this address (spacegate ip-rules create)",
		}
	}
	c.ruleID = id
	return nil
}

// admit runs the checks, in order, each with its own reason.
func (c *conn) admit() error {
	if err := c.checkSource(); err != nil {
		return err
	}
	id, err := c.route.Material.Verify(c.tlsConn.ConnectionState().PeerCertificates, c.srv.now())
	c.identity = id
	if err != nil {
		var ve *tlsconf.VerifyError
		if errors.As(err, &ve) {
			c.identity = ve.Identity
			return &Refusal{Reason: certReason(ve.Reason), Msg: ve.Error(), Err: ve.Err}
		}
		return refuse(ReasonCertUntrusted, "client certificate could not be verified", err)
	}
	if !c.route.IsEnabled() {
		return &Refusal{Reason: ReasonRouteDisabled, Msg: fmt.Sprintf("route %s is disabled by its operator", c.route.Name),
			Hint: "the route accepts connections again once it is enabled"}
	}
	if !c.srv.acquireSlot(c.snap.Config.Limits.MaxConnections) {
		return &Refusal{Reason: ReasonTooManyConnections, Msg: "too many connections through this gate", Hint: "try again later"}
	}
	c.admitted = true
	return nil
}

func (c *conn) upstreamDownMsg() string {
	return fmt.Sprintf("the database behind route %s cannot be reached right now", c.route.Name)
}

// dialUpstream connects to the route's upstream within the connect timeout.
func (c *conn) dialUpstream(ctx context.Context) error {
	start := time.Now()
	d := net.Dialer{Timeout: c.snap.Config.Limits.UpstreamConnectTimeout}
	up, err := d.DialContext(ctx, "tcp", c.route.Upstream)
	if err != nil {
		return &Refusal{Reason: ReasonUpstreamUnavailable, Msg: c.upstreamDownMsg(), Hint: "the gate itself is up; its log tells the operator why", Err: err}
	}
	c.srv.metrics.upstreamConnect.WithLabelValues(c.route.Name).Observe(time.Since(start).Seconds())
	return c.setUpstream(up)
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
// read and write of the connection whatever state its splice is in (a
// half-closed session waits on the upstream alone).
func (c *conn) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.aborted = true
	c.nc.Close()
	if c.upstream != nil {
		c.upstream.Close()
	}
}

// finish tells the client about a refusal, closes everything, and writes the
// audit line and metrics.
func (c *conn) finish(err error) {
	var ref *Refusal
	if err != nil && !errors.As(err, &ref) && !errors.Is(err, errCancelHandled) {
		ref = c.classify(err)
	}
	if c.upstream != nil {
		c.upstream.Close()
	}
	switch {
	case ref != nil && !ref.quiet && c.route.Protocol == ProtocolRedis:
		c.tellRedis(ref)
		c.lingerClose()
	case ref != nil && !ref.quiet:
		c.tellClient(ref)
		c.lingerClose()
	case c.client != nil:
		c.client.Close()
	}
	c.nc.Close()
	c.srv.conns.remove(c)
	if c.admitted {
		c.srv.releaseSlot()
	}
	c.audit(ref) // before PhaseClosed: a refusal's line names the phase it failed in
	c.phase = PhaseClosed
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

// tellClient sends a PostgreSQL client the refusal as a FATAL
// ErrorResponse, bounded in time.
func (c *conn) tellClient(r *Refusal) {
	w := c.client
	if w == nil {
		w = c.nc
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = w.Write(pgError(r))
}

// lingerClose closes after a refusal so that the client reads it: a plain
// close with unread input would reset the connection and could discard the
// error before the client reads it.
func (c *conn) lingerClose() {
	if c.tlsConn != nil && c.client == c.tlsConn {
		_ = c.tlsConn.CloseWrite()
	}
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	r := c.client
	if r == nil {
		r = c.nc
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(r, 64<<10))
	r.Close()
}

// audit writes the one log line of this connection and counts its outcome.
func (c *conn) audit(ref *Refusal) {
	m := c.srv.metrics
	fields := make([]zap.Field, 0, 20)
	fields = append(fields,
		zap.String("id", c.id),
		zap.String("route", c.route.Name),
		zap.String("source", c.src.String()),
		zap.Duration("duration", time.Since(c.start)),
	)
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
	switch {
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
		m.refused.WithLabelValues(c.route.Name, ref.Reason.String()).Inc()
		fields = append(fields, zap.String("verdict", "refused"), zap.String("reason", ref.Reason.String()),
			zap.String("phase", c.phase.String()), zap.String("message", ref.Msg))
		if ref.Err != nil {
			fields = append(fields, zap.Error(ref.Err))
		}
		c.srv.log.Warn("connection refused", fields...)
	default:
		m.closed.WithLabelValues(c.route.Name).Inc()
		m.duration.WithLabelValues(c.route.Name).Observe(time.Since(c.start).Seconds())
		m.bytes.WithLabelValues(c.route.Name, "upstream").Add(float64(c.bytesUp))
		m.bytes.WithLabelValues(c.route.Name, "client").Add(float64(c.bytesDown))
		fields = append(fields, zap.String("verdict", "closed"),
			zap.Int64("bytes_up", c.bytesUp), zap.Int64("bytes_down", c.bytesDown))
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

// CloseWrite half-closes the underlying TCP connection.
func (p *prefixConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
