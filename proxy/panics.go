package proxy

import (
	"runtime/debug"

	"go.uber.org/zap"
)

// A panic in one connection's code ends that connection, never the
// process: every edge is on the internet, and one bad input must not take
// every route down. Each goroutine that runs a connection's code recovers:
// serveConn (accept to hand-off), sessionEnded and closed (the end of a
// connection, when the engine has closed its sockets); the engine recovers
// a panic in a session's framer on its own goroutines and ends that
// session, which sessionEnded reports. The panic is logged with its stack
// and counted in spacegate_panics_total; an alert on that counter is the
// way to learn of it, as the client only sees its connection close.

// A hookPoint names a place in a connection's life where tests may run
// code (Server.hook), to prove that a panic there is contained.
type hookPoint uint8

const (
	hookAdmitted hookPoint = iota // serve goroutine, every check passed
	hookOnEngine                  // the engine, the session's framer at its first bytes
	hookFinish                    // finishing a session that ran on the engine
)

// hook runs the test hook at p, if any. Only tests set Server.testHook;
// the points are off the per-byte path.
func (s *Server) hook(c *conn, p hookPoint) {
	if s.testHook != nil {
		s.testHook(c, p)
	}
}

// notePanic logs and counts a recovered panic of c's code, with the stack
// of the goroutine that panicked: stack, or if nil the caller's, which
// must then be the deferred function that recovered, so that it still
// holds the panicking frames.
func (s *Server) notePanic(c *conn, v any, stack []byte) {
	if stack == nil {
		stack = debug.Stack()
	}
	s.metrics.Panics.Inc()
	s.log.Error("panic in connection code; the connection was closed, the gate goes on",
		zap.String("id", c.id), zap.String("route", c.routeName()), zap.String("source", c.src.String()),
		zap.String("phase", c.phase.String()), zap.Any("panic", v), zap.String("stack", string(stack)))
}

// recoverPanic, deferred on a goroutine that owns c, turns a panic into
// the end of c alone.
func (c *conn) recoverPanic() {
	if v := recover(); v != nil {
		c.srv.notePanic(c, v, nil)
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
		if c.expiry != nil {
			c.expiry.Stop()
		}
		if c.dialCancel != nil {
			c.dialCancel()
		}
		c.mu.Unlock()
	}
	c.nc.Close()
	if c.upstream != nil {
		c.upstream.Close()
	}
	c.release()
	c.phase = PhaseClosed
	if c.ended.CompareAndSwap(false, true) {
		c.srv.wg.Done()
	}
}
