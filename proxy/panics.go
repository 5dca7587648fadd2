package proxy

import (
	"errors"
	"time"

	"go.uber.org/zap"
)

// A panic in one connection's code ends that connection, never the
// process: every edge is on the internet, and one bad input must not take
// every route down. Each goroutine that runs a connection's code recovers:
// serveConn (accept to hand-off, and the goroutine splice), finishSession
// (the end of a session that ran on an event loop), and the event loop
// around its work on each session. The panic is logged with its stack and
// counted in spacegate_panics_total; an alert on that counter is the way
// to learn of it, as the client only sees its connection close.

// A hookPoint names a place in a connection's life where tests may run
// code (Server.hook), to prove that a panic there is contained.
type hookPoint uint8

const (
	hookAdmitted hookPoint = iota // serve goroutine, every check passed
	hookLoopAdd                   // event loop, the session is being added
	hookFinish                    // finishing a session that ran on the loop
)

// hook runs the test hook at p, if any. Only tests set Server.testHook;
// the points are off the per-byte path.
func (s *Server) hook(c *conn, p hookPoint) {
	if s.testHook != nil {
		s.testHook(c, p)
	}
}

// errPanicked ends a session whose code panicked on an event loop.
var errPanicked = errors.New("internal error (recovered panic)")

// notePanic logs and counts a recovered panic of c's code. It must be
// called from the deferred function that recovered, so that the stack it
// records still holds the panicking frames.
func (s *Server) notePanic(c *conn, v any) {
	s.metrics.Panics.Inc()
	s.log.Error("panic in connection code; the connection was closed, the gate goes on",
		zap.String("id", c.id), zap.String("route", c.routeName()), zap.String("source", c.src.String()),
		zap.String("phase", c.phase.String()), zap.Any("panic", v), zap.Stack("stack"))
}

// recoverPanic, deferred on a goroutine that owns c, turns a panic into
// the end of c alone.
func (c *conn) recoverPanic() {
	if v := recover(); v != nil {
		c.srv.notePanic(c, v)
		c.abandon()
	}
}

// abandon closes a connection whose code panicked, wherever it was, and
// gives back what it holds. It assumes nothing about the state the panic
// left: each step is safe to repeat after a partial finish.
func (c *conn) abandon() {
	// A panic between Lock and Unlock (none defers the unlock in
	// conn.go) would leave mu held: do not wait for it.
	if c.mu.TryLock() {
		c.aborted = true
		for _, t := range []*time.Timer{c.cutTimer, c.expiry} {
			if t != nil {
				t.Stop()
			}
		}
		c.mu.Unlock()
	}
	c.nc.Close()
	if c.upstream != nil {
		c.upstream.Close()
	}
	c.release()
	c.phase = PhaseClosed
}

// recoverPanic, deferred around the event loop's work on s, ends s alone.
func (s *session) recoverPanic() {
	v := recover()
	if v == nil {
		return
	}
	s.c.srv.notePanic(s.c, v)
	if s.done {
		return
	}
	defer func() {
		if v := recover(); v != nil {
			// Ending it panicked too: leave its slot to the loop (done
			// sessions are skipped) and finish it off the loop, which
			// closes its sockets and releases what it holds.
			s.c.srv.notePanic(s.c, v)
			s.done = true
			go s.c.finishSession(s, errPanicked)
		}
	}()
	s.end(errPanicked)
}
