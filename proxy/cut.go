package proxy

import (
	"fmt"
	"time"

	"github.com/spacegate/spacegate/config"
)

// cutGrace bounds how long a cut waits for a PostgreSQL message boundary
// before it closes the connection anyway (a huge row trickling in).
const cutGrace = 2 * time.Second

// cut ends a live connection for r. A PostgreSQL client is sent FATAL
// 57P01 naming the reason, at the next message boundary of the server's
// stream so that no message is corrupted, then closed gracefully (the
// engine's Session.Cut); a Redis client is closed gracefully at once. A cut
// during the upstream's dial cancels it, and the client is told as a
// refusal is. Before that, the connection is closed. cut may be called
// from any goroutine, more than once; the first reason wins.
func (c *conn) cut(r *Refusal) {
	c.mu.Lock()
	if c.cutReason != nil || c.aborted {
		c.mu.Unlock()
		return
	}
	c.cutReason = r
	sess, dial, dialing := c.sess, c.dialCancel, c.dialing
	c.mu.Unlock()
	switch {
	case sess != nil:
		sess.Cut(c.cutNotice(r))
	case dial != nil:
		dial() // dialUpstream returns r, which finish tells the client
	case dialing:
		// Between the steps of dialling: each looks at cutReason (under
		// mu) before it starts, and splice cuts the session it adds.
	default:
		c.abort()
	}
}

// cutRefusal returns the reason the connection was cut, or nil.
func (c *conn) cutRefusal() *Refusal {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cutReason
}

// cutNotice is what a cut client is told: for PostgreSQL, FATAL 57P01
// admin_shutdown, whatever the reason (an operator's action, a reload, a
// revocation, or the certificate's expiry ended it); for Redis nothing, as
// RESP has no message a client reads unasked.
func (c *conn) cutNotice(r *Refusal) []byte {
	if c.lis.Protocol != config.ProtocolPostgres {
		return nil
	}
	return pgFatal("57P01", "terminating connection: "+r.Msg, r.Hint)
}

// expiryRefusal is why a connection is cut when its certificate expires.
func expiryRefusal(serial string, notAfter time.Time) *Refusal {
	return &Refusal{Reason: ReasonCertExpired,
		Msg:  fmt.Sprintf("client certificate expired on %s (serial %s)", notAfter.UTC().Format(time.RFC3339), serial),
		Hint: "reconnect with a renewed certificate"}
}
