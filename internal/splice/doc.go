// Package splice is the gate's data plane: it copies bytes both ways
// between a client socket and an upstream socket, half-closes, bounds an
// upstream's silence, ends a session at a boundary of the upstream's stream
// with a notice, and closes gracefully. It knows sockets, bytes and
// boundaries; it knows no protocol. What the caller knows (where a message
// ends, what a notice says) crosses as a Framer and a byte slice, and what
// the engine knows crosses back once, in Hooks.OnEnd.
//
// # Contract
//
// Start an Engine, Wrap each socket before anything else reads it (a
// tls.Conn may then be built over the Conn for the handshake: until the
// engine takes the socket over, Conn passes every call through), and hand
// both sides to Add once the session is admitted. From then on the engine
// owns both sockets:
//
//   - bytes flow both ways until both directions have ended; the end of
//     one (EOF) is passed on as a half-close (TLS close_notify, then FIN),
//     and the other direction goes on;
//   - once the client has finished sending, the upstream's silence is
//     bounded by Hooks.Silence (idle or total, Hooks.SilenceIdle);
//   - Session.Cut ends the session at the next boundary that Hooks.Framer
//     reports in the upstream-to-client stream: the client receives whole
//     messages, then the notice, then a graceful close; if no boundary comes
//     within Hooks.CutGrace the session is aborted;
//   - when reading the upstream's stream ends (EOF or an error) while the
//     session is live and the client still sending, Hooks.UpstreamLost
//     may give a notice: the client
//     gets it, then a graceful close, and the session ends with
//     ErrUpstreamLost. It is asked only when reading ends: a failed write
//     to the upstream closes the client gracefully without a notice.
//     Hooks.ClientStream follows the client's stream, so that the hook
//     can tell a goodbye from a loss;
//   - Session.Abort ends it now;
//   - Hooks.OnEnd is called exactly once, after both sockets are closed,
//     with the byte counts and why the session ended (nil when both
//     directions ended, else ErrCut, ErrUpstreamLost, ErrAborted,
//     ErrPanicked, ErrStopped or an I/O error; match with errors.Is). It
//     is the one place where the caller releases what it holds for the
//     session.
//
// Add returns an error only when it took nothing: the caller still owns the
// sockets, and OnEnd will not be called.
//
// Ending a session is one path. The client is closed gracefully (what is
// queued, then the notice if any, then close_notify and FIN, then its input
// read and discarded until it closes, for at most LingerTime and
// LingerBytes, then close)
// when the session was cut, when its upstream failed, fell silent or was
// lost, and
// for refusals that come before any session (Engine.Close). Only an abort,
// an error on the client's own socket, a panic and Stop close at once.
// Reading what the client still sends before the close is what keeps the
// kernel from answering it with a reset, which would race the notice.
//
// # Implementations
//
// On Linux the engine runs event loops: each is a goroutine around an
// edge-triggered epoll set that waits in the runtime's poller, so an idle
// loop holds no OS thread and a session costs no goroutine. A loop has one
// read buffer shared by its sessions and one output buffer that the TLS
// records of one write share before a single write(2); a session moves at
// most a fair share of bytes per turn. Nothing on a loop blocks: a
// graceful close waits on epoll and timers like any other session.
//
// Elsewhere, with Options.Portable, and on Linux for a Conn whose socket
// has no usable descriptor (net.Pipe, a wrapper that is not a
// syscall.Conn, or that refuses SyscallConn), a session runs on two
// goroutines, one per direction, with the same contract.
//
// A panic in a session's code (its Framer) ends that session only, and
// OnEnd receives it as a *PanicError; a panic in OnEnd is reported to
// Options.OnPanic. An epoll failure ends the sessions of
// its loop with the error and is reported to Options.OnError. Neither ends
// the process.
package splice
