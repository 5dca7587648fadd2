package splice

import (
	"crypto/tls"
	"errors"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of a graceful close. The client's input is read and discarded
// until it closes, up to LingerBytes; past that it is no longer read, so
// that TCP holds a client that floods without failing its writes while it
// reads the notice. The socket is closed when the client has closed, or
// LingerTime after the close began, whichever comes first.
const (
	LingerTime  = time.Second
	LingerBytes = 64 << 10
)

// DefaultCutGrace is the cut grace when Hooks.CutGrace is zero.
const DefaultCutGrace = 2 * time.Second

// Options configure an Engine. The zero value is ready to use.
type Options struct {
	// Loops is the number of event loops; 0 means GOMAXPROCS.
	Loops int
	// Portable runs every session on goroutines, as on systems without
	// epoll.
	Portable bool
	// OnPanic, if set, is told of a panic recovered in a hook that has no
	// session left to end: OnEnd itself, or a Close's done. (A panic in a
	// session's own code, its Framer, ends the session: OnEnd receives a
	// *PanicError.) It must not block.
	OnPanic func(v any, stack []byte)
	// OnError, if set, is told of an event loop's failure (its sessions end
	// with the same error, and new sessions go to the other loops or to
	// goroutines). It must not block.
	OnError func(err error)
}

// Engine runs sessions. Its methods are safe for concurrent use.
type Engine struct {
	o     Options
	loops *loopSet // nil: every session runs on goroutines
	bufs  sync.Pool

	mu      sync.Mutex
	stopped bool
	live    map[*portableSession]struct{} // for Stop
	wg      sync.WaitGroup                // sessions and closes not yet reported
}

// Start starts an engine with its event loops, if the system has them and
// o.Portable is false.
func Start(o Options) (*Engine, error) {
	e := &Engine{o: o, live: map[*portableSession]struct{}{}}
	e.bufs.New = func() any { b := make([]byte, portableBufSize); return &b }
	if !o.Portable {
		n := o.Loops
		if n <= 0 {
			n = runtime.GOMAXPROCS(0)
		}
		ls, err := startLoops(e, n)
		if err != nil {
			return nil, err
		}
		e.loops = ls
	}
	return e, nil
}

// Stop aborts the sessions and closes still live (their OnEnd reports
// ErrStopped), waits for every OnEnd to return, and ends the loops. Add and
// Close fail with ErrStopped from then on. Stop may be called more than
// once.
func (e *Engine) Stop() {
	e.mu.Lock()
	e.stopped = true
	live := make([]*portableSession, 0, len(e.live))
	for s := range e.live {
		live = append(live, s)
	}
	e.mu.Unlock()
	if e.loops != nil {
		e.loops.stop() // a loop ends its sessions before it returns
	}
	for _, s := range live {
		s.end(ErrStopped)
	}
	e.wg.Wait()
}

// Side is one socket of a session. TLS, if not nil, runs over Conn: the
// session reads and writes through it, and half-closes with close_notify.
type Side struct {
	Conn *Conn
	TLS  *tls.Conn
}

// A Framer follows the message framing of the upstream's stream to the
// client, so that a cut lands between two messages. The engine calls it
// from one goroutine at a time, in stream order.
type Framer interface {
	// Advance consumes bytes of the stream.
	Follower
	// Boundary reports whether the first n bytes of p end the current
	// message (the stream is then at a boundary), without consuming them;
	// with n == 0 and ok, the stream is at a boundary already. It is called
	// with p == nil to ask only that.
	Boundary(p []byte) (n int, ok bool)
}

// Hooks are what the caller gives a session.
type Hooks struct {
	// Framer finds boundaries for Cut; nil means every byte is one.
	Framer Framer
	// Silence bounds the upstream's silence once the client has finished
	// sending; zero means no bound. With SilenceIdle each byte from the
	// upstream starts the bound again; without it, it is a bound in total.
	Silence     time.Duration
	SilenceIdle bool
	// CutGrace bounds how long a cut waits for a boundary; zero means
	// DefaultCutGrace.
	CutGrace time.Duration
	// ClientStream, if set, is told the client's stream to the upstream,
	// each read before it is sent on, from one goroutine at a time. It is
	// how UpstreamLost learns what the client has said (a goodbye).
	ClientStream Follower
	// UpstreamLost, if set, is asked for a notice when reading the
	// upstream's stream ends, by EOF (err nil) or an error, while the
	// session is neither cut nor closing and the client has not finished
	// sending (then the end answers the client's). It is asked at most
	// once, on the goroutine that runs Framer, after Framer has seen every
	// byte the upstream sent. A notice is sent to the client, which is
	// then closed gracefully, and the session ends with ErrUpstreamLost;
	// with none, the end is passed on as without the hook: EOF as a
	// half-close, an error as a graceful close. The notice must be one
	// whole message of the client's protocol, so the hook gives one only
	// where Framer is at a boundary.
	UpstreamLost func(err error) (notice []byte)
	// OnEnd is called once, on a goroutine of its own, after both sockets
	// are closed. It may be nil.
	OnEnd func(Stats, error)
}

// A Follower follows a stream: Advance is given its bytes in order.
type Follower interface {
	Advance(p []byte)
}

// Stats count the bytes a session moved.
type Stats struct {
	Up   int64 // client to upstream
	Down int64 // upstream to client, not counting a cut's notice
}

// Session is a live session. Its methods are safe for concurrent use, any
// number of times, at any point of its life.
type Session struct {
	cutOnce, abortOnce atomic.Bool
	impl               interface {
		cut(notice []byte)
		abort()
	}
}

// Cut ends the session at the next boundary of the upstream's stream: the
// client receives the messages up to it, then notice, then a graceful
// close. A session that gets no boundary within its cut grace is aborted.
// The first call counts; notice is copied.
func (s *Session) Cut(notice []byte) {
	if s.cutOnce.CompareAndSwap(false, true) {
		s.impl.cut(append([]byte(nil), notice...))
	}
}

// Abort ends the session now, closing both sockets.
func (s *Session) Abort() {
	if s.abortOnce.CompareAndSwap(false, true) {
		s.impl.abort()
	}
}

// Add starts a session between client and upstream; the engine owns both
// sockets from then on. It runs on an event loop when both Conns can be
// taken over, else on goroutines. An error means nothing was taken.
func (e *Engine) Add(client, upstream Side, h Hooks) (*Session, error) {
	if client.Conn == nil || upstream.Conn == nil {
		return nil, errors.New("splice: Add: a side has no Conn")
	}
	if h.CutGrace <= 0 {
		h.CutGrace = DefaultCutGrace
	}
	e.mu.Lock()
	defer e.mu.Unlock() // Stop's abort of the loops comes after this add
	if e.stopped {
		return nil, ErrStopped
	}
	pub := &Session{}
	if e.loops != nil {
		ok, err := e.loops.add(pub, client, upstream, h, nil)
		if err != nil {
			return nil, err
		}
		if ok {
			return pub, nil
		}
	}
	e.startPortable(pub, client, upstream, h)
	return pub, nil
}

// Close closes client gracefully, outside any session: a refusal before
// one began. What the TLS conn, if any, holds is sent first, then notice,
// then the close, as at the end of a cut. done, if not nil, is called once
// the socket is closed, on a goroutine of its own. An error means nothing
// was taken.
func (e *Engine) Close(client Side, notice []byte, done func()) error {
	if client.Conn == nil {
		return errors.New("splice: Close: no Conn")
	}
	h := Hooks{OnEnd: func(Stats, error) {
		if done != nil {
			done()
		}
	}}
	notice = append([]byte(nil), notice...)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		return ErrStopped
	}
	if e.loops != nil {
		ok, err := e.loops.add(nil, client, Side{}, h, notice)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		gracefulClose(client, notice)
		e.report(h, Stats{}, nil)
	}()
	return nil
}

// report calls h.OnEnd, recovering a panic in it. e.wg counts the call.
func (e *Engine) report(h Hooks, st Stats, err error) {
	if h.OnEnd == nil {
		return
	}
	defer e.recoverPanic(func(pe *PanicError) {
		if e.o.OnPanic != nil {
			e.o.OnPanic(pe.Value, pe.Stack)
		}
	})
	h.OnEnd(st, err)
}

// reportAsync calls h.OnEnd on a goroutine of its own and marks the
// session reported.
func (e *Engine) reportAsync(h Hooks, st Stats, err error) {
	go func() {
		defer e.wg.Done()
		e.report(h, st, err)
	}()
}

// recoverPanic, deferred, turns a panic into a *PanicError for then.
func (e *Engine) recoverPanic(then func(*PanicError)) {
	if v := recover(); v != nil {
		then(&PanicError{Value: v, Stack: debug.Stack()})
	}
}

func (e *Engine) noteError(err error) {
	if e.o.OnError != nil {
		e.o.OnError(err)
	}
}
