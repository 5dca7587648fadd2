package proxy

import (
	"fmt"
	"sync/atomic"

	"github.com/spacegate/spacegate/internal/splice"
)

// upstreamLostHint is what a client whose database went away is told to
// do. The gate is up: the fault is behind it.
const upstreamLostHint = "the database server restarted, crashed or ended this session without saying why; the gate is up, so reconnect, and if it persists ask the operator to check the database"

// upstreamLostMsg is the FATAL a PostgreSQL client gets when its route's
// database closes a live session without a word: without it libpq says
// only "server closed the connection unexpectedly" (or, over TLS, "SSL
// connection has been closed unexpectedly"), which blames no one.
func upstreamLostMsg(route string) string {
	return fmt.Sprintf("the database behind route %s closed the connection unexpectedly", route)
}

// clientStream follows a PostgreSQL client's stream to its server, so that
// a server that closes after the client's Terminate is seen as a goodbye,
// not a loss. The engine runs it on the client's side, which may be
// another goroutine than the one that asks upstreamLost.
type clientStream struct {
	f          pgFramer
	terminated atomic.Bool
}

var _ splice.Follower = (*clientStream)(nil)

func (s *clientStream) Advance(b []byte) {
	s.f.Advance(b)
	if s.f.last == 'X' {
		s.terminated.Store(true)
	}
}

// upstreamLost is a PostgreSQL session's splice.Hooks.UpstreamLost: the
// server's stream (down, the session's Framer) ended while the client
// still spoke. A loss is one the server did not explain with an
// ErrorResponse (a FATAL such as 57P01 for pg_terminate_backend) and the
// client did not ask for with a Terminate: a crash, a kill -9, a network
// fault. It is counted; at a message boundary the client gets FATAL 08006
// naming the route, and mid-message nothing can be added, so the client
// sees the end as before.
func (c *conn) upstreamLost(down *pgFramer, up *clientStream) func(error) []byte {
	return func(error) []byte {
		if up.terminated.Load() || down.last == 'E' {
			return nil
		}
		c.lost.Store(true)
		if !down.atBoundary() {
			return nil
		}
		return pgFatal("08006", upstreamLostMsg(c.route.Name), upstreamLostHint)
	}
}
