package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/splice"
)

func upstreamDownMsg(r *Route) string {
	return fmt.Sprintf("the database behind route %s cannot be reached right now", r.Name)
}

// dialUpstream connects to the route's upstream within the connect
// timeout, with TLS if the route asks for it. A cut meanwhile cancels the
// dial, and its reason is returned, for finish to tell the client.
func (c *conn) dialUpstream(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.mu.Lock()
	if r := c.cutReason; r != nil {
		c.mu.Unlock()
		return r
	}
	c.dialCancel = cancel
	c.mu.Unlock()
	err := c.dial(ctx)
	c.mu.Lock()
	c.dialCancel = nil
	r := c.cutReason
	c.mu.Unlock()
	if r != nil {
		return r // finish closes the upstream, if it was set
	}
	return err
}

// dial is dialUpstream's connect, until ctx is cancelled.
func (c *conn) dial(ctx context.Context) error {
	start := time.Now()
	timeout := c.snap.Config.Limits.UpstreamConnectTimeout
	d := net.Dialer{Timeout: timeout}
	up, err := d.DialContext(ctx, "tcp", c.route.Upstream)
	if err != nil {
		return &Refusal{Reason: ReasonUpstreamUnavailable, Msg: upstreamDownMsg(c.route), Hint: "the gate itself is up; its log tells the operator why", Err: err}
	}
	if c.route.UpstreamTLS != nil {
		_ = up.SetDeadline(time.Now().Add(timeout))
		// The SSLRequest's answer is read under the deadline, not ctx.
		stop := context.AfterFunc(ctx, func() { _ = up.SetDeadline(time.Now()) })
		fup := splice.Wrap(up) // so that the engine can take the socket over
		tup, err := upstreamTLS(ctx, c.route, fup)
		if !stop() || err != nil {
			up.Close()
			if err == nil {
				err = ctx.Err()
			}
			return err
		}
		_ = up.SetDeadline(time.Time{})
		up = tup
		c.upFd = fup
	}
	c.srv.metrics.UpstreamConnect.WithLabelValues(c.route.Name).Observe(time.Since(start).Seconds())
	return c.setUpstream(up)
}

// upstreamTLS starts TLS towards r's upstream over up: for PostgreSQL after
// an SSLRequest answered 'S' (reading exactly that one byte), for Redis at
// once.
func upstreamTLS(ctx context.Context, r *Route, up net.Conn) (net.Conn, error) {
	failed := func(err error) error {
		return &Refusal{Reason: ReasonUpstreamUnavailable, Msg: upstreamDownMsg(r), Hint: "TLS to the database failed; the gate's log tells the operator why", Err: err}
	}
	if r.Protocol == config.ProtocolPostgres {
		if _, err := up.Write(sslRequestPacket); err != nil {
			return nil, failed(err)
		}
		var b [1]byte
		if _, err := io.ReadFull(up, b[:]); err != nil {
			return nil, failed(fmt.Errorf("reading the answer to SSLRequest: %w", err))
		}
		switch b[0] {
		case 'S':
		case 'N':
			return nil, &Refusal{Reason: ReasonUpstreamUnavailable,
				Msg:  fmt.Sprintf("the database behind route %s does not accept TLS, and the route requires it (upstream_tls: %s)", r.Name, r.Route.UpstreamTLS),
				Hint: "the operator must enable ssl on the database or change upstream_tls",
				Err:  fmt.Errorf("upstream %s answered SSLRequest with N", r.Upstream)}
		default:
			return nil, failed(fmt.Errorf("upstream answered SSLRequest with %q, want S or N", b[0]))
		}
	}
	tc := tls.Client(up, r.UpstreamTLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, failed(fmt.Errorf("TLS handshake with upstream %s: %w", r.Upstream, err))
	}
	return tc, nil
}

// sslRequestPacket is PostgreSQL's SSLRequest: length 8, code 80877103.
var sslRequestPacket = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
