package proxy

// The PostgreSQL front end. A client speaks first, with a start-up packet
// that has no type byte: a big-endian int32 length (itself included) and an
// int32 code. The codes and the server's answers (protocol.sgml, "Message
// Flow", and src/backend/tcop/backend_startup.c):
//
//	SSLRequest     80877103  answer 'S', then TLS; never an ErrorResponse,
//	                         which libpq since CVE-2024-10977 shows only as
//	                         "server sent an error response during SSL exchange"
//	GSSENCRequest  80877104  answer 'N'; the client may then send SSLRequest
//	CancelRequest  80877102  no answer; the server closes
//	StartupMessage 3.x       protocol version 3.0 or 3.2, then name\0value\0...\0
//
// A PostgreSQL 17 client with sslnegotiation=direct skips the SSLRequest and
// starts a TLS ClientHello at once; its first byte, 0x16 (a TLS handshake
// record), can never start a start-up packet, whose length is below 2^24.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"
)

const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
	protocolMajor3    = 3

	// maxStartupPacket is PostgreSQL's MAX_STARTUP_PACKET_LENGTH: a longer
	// packet is refused before anything is allocated for it.
	maxStartupPacket = 10000

	tlsRecordHandshake = 0x16
	alpnPostgres       = "postgresql"
)

// readStartupPacket reads one start-up packet from r, exactly and never more:
// bytes after it belong to the next protocol phase. first, if not nil, is its
// already-read first byte.
func readStartupPacket(r io.Reader, first []byte) ([]byte, uint32, error) {
	var hdr [8]byte
	n := copy(hdr[:], first)
	if _, err := io.ReadFull(r, hdr[n:]); err != nil {
		return nil, 0, err
	}
	length := binary.BigEndian.Uint32(hdr[0:4])
	code := binary.BigEndian.Uint32(hdr[4:8])
	if length < 8 || length > maxStartupPacket {
		return nil, 0, refuse(ReasonProtocolViolation, fmt.Sprintf("invalid length of startup packet: %d bytes, expected 8 to %d", length, maxStartupPacket), nil)
	}
	pkt := make([]byte, length)
	copy(pkt, hdr[:])
	if _, err := io.ReadFull(r, pkt[8:]); err != nil {
		return nil, 0, err
	}
	return pkt, code, nil
}

// startPostgres negotiates TLS with a PostgreSQL client whose first byte
// has been read, and reads its StartupMessage inside TLS into c.startup.
func (c *conn) startPostgres(ctx context.Context, first byte) error {
	c.phase = PhaseNegotiate
	gssencRefused := false
	for {
		if first == tlsRecordHandshake {
			return c.startDirectTLS(ctx, []byte{first})
		}
		pkt, code, err := readStartupPacket(c.nc, []byte{first})
		if err != nil {
			return err
		}
		switch {
		case code == codeGSSENCRequest && len(pkt) == 8 && !gssencRefused:
			// GSSAPI encryption is not offered; libpq then asks for TLS.
			gssencRefused = true
			if _, err := c.nc.Write([]byte{'N'}); err != nil {
				return err
			}
		case code == codeSSLRequest && len(pkt) == 8:
			c.advance(progressNegotiated)
			return c.startClassicTLS(ctx)
		case code == codeCancelRequest:
			return c.forwardCancel(ctx, pkt)
		case code>>16 == protocolMajor3:
			return &Refusal{
				Reason: ReasonTLSRequired,
				Msg:    fmt.Sprintf("route %s requires TLS with a client certificate; the connection was not encrypted", c.routeName()),
				Hint:   "connect with sslmode=verify-full (or verify-ca) and set sslcert, sslkey and sslrootcert (PGSSLCERT, PGSSLKEY, PGSSLROOTCERT)",
			}
		default:
			return unsupportedProtocol(code)
		}
		var b [1]byte
		if _, err := io.ReadFull(c.nc, b[:]); err != nil {
			return err
		}
		first = b[0]
	}
}

// startClassicTLS answers an SSLRequest with 'S' and runs the handshake.
func (c *conn) startClassicTLS(ctx context.Context) error {
	// Bytes sent after the SSLRequest but before our 'S' cannot belong to a
	// TLS ClientHello of an honest client: they are plaintext that a
	// man-in-the-middle could have injected (CVE-2021-23222). PostgreSQL
	// refuses them; so do we.
	if pending, err := hasPendingInput(c.nc); err != nil {
		return err
	} else if pending {
		return refuse(ReasonProtocolViolation, "received unencrypted data after SSL request", nil)
	}
	if _, err := c.nc.Write([]byte{'S'}); err != nil {
		return err
	}
	if err := c.startTLS(ctx, nil); err != nil {
		return err
	}
	return c.readStartupInTLS(ctx)
}

// startDirectTLS runs a PostgreSQL 17 direct TLS handshake, whose first byte
// has been read already. ALPN "postgresql" is mandatory there: it is what
// tells a PostgreSQL client from another TLS client talking to the wrong port.
func (c *conn) startDirectTLS(ctx context.Context, first []byte) error {
	if err := c.startTLS(ctx, first); err != nil {
		return err
	}
	if p := c.tlsConn.ConnectionState().NegotiatedProtocol; p != alpnPostgres {
		return refuse(ReasonProtocolViolation, "direct TLS connection without ALPN protocol \"postgresql\"; use a PostgreSQL 17+ client or sslnegotiation=postgres", nil)
	}
	return c.readStartupInTLS(ctx)
}

// readStartupInTLS reads the first packet inside TLS: a StartupMessage, or a
// CancelRequest sent by libpq 17's PQcancelCreate or pgx.
func (c *conn) readStartupInTLS(ctx context.Context) error {
	pkt, code, err := readStartupPacket(c.client, nil)
	if err != nil {
		return err
	}
	switch {
	case code == codeCancelRequest:
		return c.forwardCancel(ctx, pkt)
	case code == codeSSLRequest || code == codeGSSENCRequest:
		return refuse(ReasonProtocolViolation, "encryption requested again inside TLS", nil)
	}
	sm, ref := parseStartupMessage(pkt)
	if ref != nil {
		return ref
	}
	// Any 3.x goes on unchanged: the upstream answers a minor version it
	// does not speak with NegotiateProtocolVersion, as PostgreSQL does.
	c.pgUser, c.pgDB = sm.user, sm.database
	c.startup = pkt
	return nil
}

// forwardCancel forwards a CancelRequest to the upstream of each route it
// may be meant for whose IP rules allow the source. A cancel carries no
// certificate when it comes in plaintext, as from psql and pgbench, so the
// IP rule is its only gate here; PostgreSQL itself checks the secret key.
// The packet is forwarded unchanged, so any replica can forward any cancel
// without shared state.
//
// Inside TLS the route is known from SNI. A plaintext cancel on a listener
// shared by several routes carries no server name, so it goes to every
// upstream of the listener: only the server that issued the key acts on it
// (a pid and a 32-bit or longer random key must both match), and no state
// has to be shared between replicas, as rewriting keys would need. The
// upstreams are tried at once, under one short bound, so that one that
// does not answer delays neither the others nor the client.
func (c *conn) forwardCancel(ctx context.Context, pkt []byte) error {
	c.cancel = true
	m := c.srv.metrics.Cancels
	if ref := checkCancelPacket(pkt); ref != nil {
		m.WithLabelValues(c.routeName(), "refused").Inc()
		return ref
	}
	if c.early != nil {
		c.early.quiet = true // PostgreSQL never answers a cancel
		return c.early
	}
	targets := c.lis.Routes
	if c.route != nil {
		targets = []*Route{c.route}
	} else if !c.lis.Shared() {
		c.route = c.lis.Routes[0]
	}
	var refusal error
	allowed := make([]*Route, 0, len(targets))
	for _, r := range targets {
		if err := c.checkSourceOn(r); err != nil {
			refusal = err
			m.WithLabelValues(r.Name, "refused").Inc()
			continue
		}
		if !r.IsEnabled() {
			m.WithLabelValues(r.Name, "refused").Inc()
			continue
		}
		allowed = append(allowed, r)
	}
	// The client waits for the close that says its cancel was delivered
	// (psql does so inside its SIGINT handler): let it go at the first
	// upstream that took the packet rather than after the slowest.
	// PostgreSQL's own close says no more, as its signal to the backend is
	// asynchronous. Inside TLS there is a single target, and the close is
	// left to finish, which can send close_notify.
	var delivered func()
	if len(allowed) > 1 && c.tlsConn == nil {
		delivered = func() { _ = c.nc.Close() }
	}
	forwarded := 0
	for i, err := range c.sendCancels(ctx, allowed, pkt, delivered) {
		r := allowed[i]
		if err != nil {
			m.WithLabelValues(r.Name, "failed").Inc()
			c.srv.log.Warn("cancel request not forwarded", zap.String("id", c.id), zap.String("route", r.Name), zap.Error(err))
			continue
		}
		m.WithLabelValues(r.Name, "forwarded").Inc()
		forwarded++
	}
	if forwarded == 0 && refusal != nil {
		var r *Refusal
		if errors.As(refusal, &r) {
			r.quiet = true // PostgreSQL never answers a cancel
		}
		return refusal
	}
	return errCancelHandled
}

const (
	// maxCancelWait bounds the whole forwarding of one cancel, unless
	// upstream_connect_timeout is shorter. A cancel that needs longer to
	// reach a server is too late to be of use, and an upstream that takes
	// the packet but never closes must not hold a pending slot for long.
	maxCancelWait = 2 * time.Second
	// maxCancelDials bounds the upstreams one cancel dials at a time.
	maxCancelDials = 16
)

// sendCancels delivers pkt to the upstream of each route in routes, at
// most maxCancelDials at a time and all within the cancel bound, and
// returns each one's outcome. delivered, if not nil, runs once, at the
// first delivery.
func (c *conn) sendCancels(ctx context.Context, routes []*Route, pkt []byte, delivered func()) []error {
	errs := make([]error, len(routes))
	if len(routes) == 0 {
		return errs
	}
	ctx, cancel := context.WithTimeout(ctx, min(c.snap.Config.Limits.UpstreamConnectTimeout, maxCancelWait))
	defer cancel()
	sem := make(chan struct{}, maxCancelDials)
	var once sync.Once
	var wg sync.WaitGroup
	for i, r := range routes {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			// This goroutine is outside the connection's own: a panic here
			// must not take the process with it.
			defer func() {
				if p := recover(); p != nil {
					c.srv.notePanic(c, p, nil)
					errs[i] = fmt.Errorf("panic forwarding a cancel: %v", p)
				}
			}()
			errs[i] = sendCancel(ctx, r, pkt)
			if errs[i] == nil && delivered != nil {
				once.Do(delivered)
			}
		})
	}
	wg.Wait()
	return errs
}

// sendCancel delivers one CancelRequest to r's upstream, over TLS if the
// route talks TLS to it, and waits for the server to close: it has read
// the packet then. ctx bounds it all.
func sendCancel(ctx context.Context, r *Route, pkt []byte) error {
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", r.Upstream)
	if err != nil {
		return err
	}
	defer up.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = up.SetDeadline(dl)
	}
	if r.UpstreamTLS != nil {
		tup, err := upstreamTLS(ctx, r, up)
		if err != nil {
			return err
		}
		defer tup.Close()
		up = tup
	}
	if _, err := up.Write(pkt); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, io.LimitReader(up, 1024)); err != nil {
		return fmt.Errorf("upstream did not close after the cancel request: %w", err)
	}
	return nil
}

// pgError encodes r as a PostgreSQL FATAL ErrorResponse.
func pgError(r *Refusal) []byte {
	if errors.Is(r.Err, errOldProtocol) {
		// Protocol 2's ErrorResponse: a type byte and a C string, which
		// PostgreSQL fills as below (send_message_to_frontend).
		return append([]byte("EFATAL:  "+r.Msg+"\n"), 0)
	}
	return pgFatal(r.Reason.sqlstate(), r.Msg, r.Hint)
}

// pgFatal encodes a FATAL ErrorResponse with SQLSTATE code; nil if it
// cannot be encoded, which only an oversized message can cause.
func pgFatal(code, msg, hint string) []byte {
	e := pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                code,
		Message:             msg,
		Hint:                hint,
	}
	b, err := e.Encode(nil)
	if err != nil {
		return nil
	}
	return b
}

// hasPendingInput reports whether the peer has sent bytes that are waiting
// in the socket's receive buffer, without consuming them.
func hasPendingInput(nc net.Conn) (bool, error) {
	rc, err := rawConn(nc)
	if rc == nil || err != nil {
		return false, err
	}
	pending := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		pending = n > 0 && rerr == nil
		return true // never wait: we only want to know what is there now
	})
	return pending, err
}
