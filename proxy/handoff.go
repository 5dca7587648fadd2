package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/splice"
)

// errHandedOff ends the connection's goroutine once the engine runs its
// session; the session's OnEnd (sessionEnded) finishes the connection.
var errHandedOff = errors.New("session handed to the engine")

// redisHalfCloseIdle bounds how long a Redis session whose client has
// finished sending (half-close, as `redis-cli < commands` does) may wait
// for its upstream without a byte: a client that left and a hung upstream
// must not hold a session forever.
const redisHalfCloseIdle = 60 * time.Second

// splice hands the connection's two sockets to the engine (package
// splice), which copies both ways until both directions have ended, and
// returns errHandedOff: from here on sessionEnded, called once when the
// engine has closed both sockets, is the one place the connection is
// finished.
func (c *conn) splice() error {
	client := splice.Side{Conn: c.fd, TLS: c.tlsConn}
	if c.tlsConn == nil || c.client != c.tlsConn {
		client = splice.Side{Conn: splice.Wrap(c.client)}
	}
	up := splice.Side{Conn: c.upFd}
	switch u := c.upstream.(type) {
	case *tls.Conn:
		up.TLS = u
	default:
		up.Conn = splice.Wrap(u)
	}
	h := splice.Hooks{OnEnd: c.sessionEnded, CutGrace: cutGrace}
	if c.lis.Protocol == config.ProtocolPostgres {
		// A PostgreSQL client never half-closes: its session is over, and
		// the server, which sees EOF, closes at once; give it the connect
		// timeout, not forever.
		var down *pgFramer
		h.Framer, down = c.framer()
		up := &clientStream{}
		h.ClientStream, h.UpstreamLost = up, c.upstreamLost(down, up)
		h.Silence = c.snap.Config.Limits.UpstreamConnectTimeout
	} else {
		// A Redis client may still be reading replies: a bound on
		// idleness, not in total.
		h.Silence, h.SilenceIdle = redisHalfCloseIdle, true
	}
	c.mu.Lock()
	if c.aborted {
		c.mu.Unlock()
		return net.ErrClosed
	}
	s, err := c.srv.engine.Add(client, up, h)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	c.sess = s
	cut := c.cutReason
	c.mu.Unlock()
	if cut != nil {
		// Cut while dialling, after its last look: nothing has come from
		// the upstream yet, so the notice goes at once.
		s.Cut(c.cutNotice(cut))
	}
	return errHandedOff
}

// framer is the session's PostgreSQL framer, and the pgFramer in it; with
// a test hook set, one that runs the hook on the engine, on the first
// bytes it sees.
func (c *conn) framer() (splice.Framer, *pgFramer) {
	if c.srv.testHook == nil {
		f := &pgFramer{}
		return f, f
	}
	f := &hookFramer{c: c}
	return f, &f.pgFramer
}

// hookFramer is a pgFramer that runs the test hook hookFramer once.
type hookFramer struct {
	pgFramer
	c      *conn
	hooked bool
}

func (f *hookFramer) Advance(b []byte) {
	if !f.hooked {
		f.hooked = true
		f.c.srv.hook(f.c, hookOnEngine)
	}
	f.pgFramer.Advance(b)
}

// sessionEnded is the session's OnEnd: the engine has closed both
// sockets. It finishes the connection.
func (c *conn) sessionEnded(st splice.Stats, err error) {
	defer c.recoverPanic()
	c.bytesUp, c.bytesDown = st.Up, st.Down
	c.endErr = err
	var pe *splice.PanicError
	if errors.As(err, &pe) {
		c.srv.notePanic(c, pe.Value, pe.Stack)
	}
	c.srv.hook(c, hookFinish)
	c.done(nil)
}
