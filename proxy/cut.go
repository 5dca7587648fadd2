package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/spacegate/spacegate/config"
)

// cutGrace bounds how long a cut waits for a PostgreSQL message boundary
// before it closes the connection anyway (a huge row trickling in).
const cutGrace = 2 * time.Second

// errCut ends a splice that was cut after a reload or at certificate expiry.
var errCut = errors.New("connection cut")

// cut ends a live connection for r. A PostgreSQL client is sent FATAL 57P01
// naming the reason, at the next message boundary of the server's stream so
// that no message is corrupted; other clients are disconnected at once.
// cut may be called from any goroutine, more than once; the first reason wins.
func (c *conn) cut(r *Refusal) {
	c.mu.Lock()
	if c.cutReason != nil || c.aborted {
		c.mu.Unlock()
		return
	}
	c.cutReason = r
	// Set under mu: a session handed to an event loop after this sees it.
	c.cutting.Store(true)
	up, sess := c.upstream, c.sess
	c.mu.Unlock()
	if c.lis.Protocol != config.ProtocolPostgres || up == nil {
		c.abort()
		return
	}
	// Wake the upstream-to-client copier, the only writer to the client,
	// so that it sends the notice itself between two messages.
	if sess != nil {
		sess.l.post(loopCmd{kind: cmdCut, s: sess})
	} else {
		_ = up.SetReadDeadline(time.Now())
	}
	t := time.AfterFunc(cutGrace, c.abort)
	c.mu.Lock()
	if c.aborted {
		// The connection finished meanwhile, and finish found no timer
		// to stop: stop it here.
		t.Stop()
	} else {
		c.cutTimer = t
	}
	c.mu.Unlock()
}

// cutRefusal returns the reason the connection was cut, or nil.
func (c *conn) cutRefusal() *Refusal {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cutReason
}

// sendCutNotice writes the FATAL of a cut to a PostgreSQL client.
func (c *conn) sendCutNotice() {
	r := c.cutRefusal()
	if r == nil {
		return
	}
	// 57P01 admin_shutdown, whatever the reason: an operator's action
	// (a reload, a revocation) or the certificate's expiry ended it.
	b := pgFatal("57P01", "terminating connection: "+r.Msg, r.Hint)
	if b == nil {
		return
	}
	_ = c.client.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.client.Write(b)
}

// pgFramer follows the message framing of a PostgreSQL server's stream (a
// type byte and a 4-byte length that counts itself), so that a cut can wait
// for a boundary. It costs a few comparisons per message.
type pgFramer struct {
	hdr       [5]byte
	hdrN      int   // header bytes of the current message seen so far
	remaining int64 // body bytes of the current message still to come
}

func (f *pgFramer) atBoundary() bool { return f.hdrN == 0 && f.remaining == 0 }

// advance consumes b.
func (f *pgFramer) advance(b []byte) {
	for len(b) > 0 {
		if f.remaining > 0 {
			n := int(min(f.remaining, int64(len(b))))
			f.remaining -= int64(n)
			b = b[n:]
			continue
		}
		n := copy(f.hdr[f.hdrN:], b)
		f.hdrN += n
		b = b[n:]
		if f.hdrN == len(f.hdr) {
			f.hdrN = 0
			f.remaining = max(int64(binary.BigEndian.Uint32(f.hdr[1:]))-4, 0)
		}
	}
}

// untilBoundary returns how many bytes of b complete the current message,
// and whether b reaches its end; 0, true when already at a boundary.
func (f *pgFramer) untilBoundary(b []byte) (int, bool) {
	if f.atBoundary() {
		return 0, true
	}
	g := *f
	for i := 0; i < len(b); {
		if g.remaining > 0 {
			n := int(min(g.remaining, int64(len(b)-i)))
			g.remaining -= int64(n)
			i += n
		} else {
			g.hdr[g.hdrN] = b[i]
			g.hdrN++
			i++
			if g.hdrN == len(g.hdr) {
				g.hdrN = 0
				g.remaining = max(int64(binary.BigEndian.Uint32(g.hdr[1:]))-4, 0)
			}
		}
		if g.atBoundary() {
			return i, true
		}
	}
	return 0, false
}

// expiryRefusal is why a connection is cut when its certificate expires.
func expiryRefusal(serial string, notAfter time.Time) *Refusal {
	return &Refusal{Reason: ReasonCertExpired,
		Msg:  fmt.Sprintf("client certificate expired on %s (serial %s)", notAfter.UTC().Format(time.RFC3339), serial),
		Hint: "reconnect with a renewed certificate"}
}
