package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spacegate/spacegate/config"
)

func upstreamDownMsg(r *Route) string {
	return fmt.Sprintf("the database behind route %s cannot be reached right now", r.Name)
}

// dialUpstream connects to the route's upstream within the connect
// timeout, with TLS if the route asks for it.
func (c *conn) dialUpstream(ctx context.Context) error {
	start := time.Now()
	timeout := c.snap.Config.Limits.UpstreamConnectTimeout
	d := net.Dialer{Timeout: timeout}
	up, err := d.DialContext(ctx, "tcp", c.route.Upstream)
	if err != nil {
		return &Refusal{Reason: ReasonUpstreamUnavailable, Msg: upstreamDownMsg(c.route), Hint: "the gate itself is up; its log tells the operator why", Err: err}
	}
	if c.route.UpstreamTLS != nil {
		_ = up.SetDeadline(time.Now().Add(timeout))
		fup := newFdConn(up) // so that an event loop can take it over
		tup, err := upstreamTLS(ctx, c.route, fup)
		if err != nil {
			up.Close()
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
