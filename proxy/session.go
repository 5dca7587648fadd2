package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// errHandedOff ends the connection's goroutine once an event loop runs its
// splice; the loop finishes the connection when the session ends.
var errHandedOff = errors.New("session handed to the event loop")

// errAborted ends a session that another goroutine closed (drain, a cut
// that found no message boundary in time).
var errAborted = errors.New("session aborted")

// session is a spliced connection run by an event loop: the same copy as
// splice.go, both directions in one place. Only the loop touches it.
type session struct {
	c         *conn
	l         *loop
	slot, gen int32
	queued    bool // in this turn's list of sessions to pump
	done      bool

	client   *fdConn // under tls
	tls      *tls.Conn
	upstream *fdConn
	pg       bool
	framer   pgFramer // the server's stream, for cuts (PostgreSQL)
	cutting  bool

	clientEOF, upstreamEOF bool
	finUpstream, finClient finState

	// Once the client has finished sending, the upstream's silence is
	// bounded: idle since the last byte (Redis) or in total (PostgreSQL).
	idle      time.Duration
	idleTotal bool
	last      time.Time
	timer     *time.Timer
}

// finState is the half-close of one socket: FIN is sent once what is
// queued before it has gone.
type finState uint8

const (
	finNone finState = iota
	finWanted
	finSent
)

// handOff moves a spliced connection to an event loop, if it can run
// there: TLS from the client over TCP, plain TCP to the upstream. The
// caller's goroutine then returns; the loop finishes the connection.
func (c *conn) handOff() error {
	ls := c.srv.loops
	if ls == nil || c.fd == nil || c.tlsConn == nil || c.client != c.tlsConn {
		return errors.ErrUnsupported
	}
	if pc, ok := c.fd.Conn.(*prefixConn); ok && len(pc.prefix) > 0 {
		return errors.ErrUnsupported
	}
	if _, ok := c.upstream.(*net.TCPConn); !ok {
		return errors.ErrUnsupported // upstream TLS: the goroutine splice
	}
	cfd, err := dupFd(c.nc)
	if err != nil {
		return err
	}
	ufd, err := dupFd(c.upstream)
	if err != nil {
		unix.Close(cfd)
		return err
	}
	s := &session{
		c:        c,
		l:        ls.pick(),
		client:   c.fd,
		tls:      c.tlsConn,
		upstream: newFdConn(c.upstream),
		pg:       c.lis.Protocol == ProtocolPostgres,
	}
	c.mu.Lock()
	if c.aborted {
		c.mu.Unlock()
		unix.Close(cfd)
		unix.Close(ufd)
		return net.ErrClosed
	}
	s.client.adopt(cfd, c.nc)
	s.upstream.adopt(ufd, c.upstream)
	// The tls.Conn may hold bytes read with the StartupMessage: look.
	s.client.readable = true
	c.sess = s
	// Posted under mu, so that an abort or a cut, which post under mu
	// too once they see sess, reach the loop after the session.
	s.l.post(loopCmd{kind: cmdAdd, s: s})
	c.mu.Unlock()
	return nil
}

// pump moves what can be moved now, and ends the session when both
// directions have.
func (s *session) pump() {
	if s.c.cutting.Load() && !s.cutting {
		s.startCut() // a cut that came before the loop took the session
		if s.done {
			return
		}
	}
	more, err := s.step()
	switch {
	case err != nil:
		s.end(err)
	case s.clientEOF && s.upstreamEOF && s.finClient == finSent && s.finUpstream == finSent:
		s.end(nil)
	case more:
		s.l.again = append(s.l.again, s)
	}
}

// step copies both ways until the sockets are drained, a destination is
// backed up, or the fair share is spent (more: call again).
func (s *session) step() (more bool, err error) {
	if err := s.flush(); err != nil {
		return false, err
	}
	buf := s.l.readBuf

	// Client to upstream: plaintext out of TLS, written at once.
	for budget := loopFairShare; !s.clientEOF && len(s.upstream.out) == 0; {
		if budget <= 0 {
			more = true
			break
		}
		n, rerr := s.tls.Read(buf)
		if n > 0 {
			budget -= n
			s.c.bytesUp += int64(n)
			if err := s.upstream.send(buf[:n]); err != nil {
				return false, err
			}
		}
		if rerr != nil {
			if errors.Is(rerr, errWouldBlock) {
				break
			}
			if !errors.Is(rerr, io.EOF) {
				return false, rerr
			}
			s.clientEOF = true
			s.finUpstream = finWanted
			s.boundUpstream()
		}
	}

	// Upstream to client: one TLS write, and one system call, per read.
	for budget := loopFairShare; !s.upstreamEOF && len(s.client.out) == 0; {
		if budget <= 0 {
			more = true
			break
		}
		n, rerr := s.upstream.Read(buf)
		if n > 0 {
			budget -= n
			data := buf[:n]
			if s.cutting {
				if k, ok := s.framer.untilBoundary(data); ok {
					s.toClient(data[:k])
					s.c.sendCutNotice()
					return false, errCut
				}
			}
			if s.pg {
				s.framer.advance(data)
			}
			if s.clientEOF && !s.idleTotal {
				s.last = time.Now()
			}
			if err := s.toClient(data); err != nil {
				return false, err
			}
		}
		if rerr != nil {
			if errors.Is(rerr, errWouldBlock) {
				break
			}
			if !errors.Is(rerr, io.EOF) {
				return false, rerr
			}
			s.upstreamEOF = true
			if s.cutting {
				return false, errCut // the server ended first; nothing to wait for
			}
			_ = s.tls.CloseWrite() // close_notify, queued
			s.finClient = finWanted
		}
	}
	return more, s.flush()
}

// toClient encrypts data and sends it.
func (s *session) toClient(data []byte) error {
	s.c.bytesDown += int64(len(data))
	if _, err := s.tls.Write(data); err != nil {
		return err
	}
	return s.client.flush()
}

// flush sends what is queued on both sockets, then any FIN that waited
// for it.
func (s *session) flush() error {
	for _, x := range []struct {
		f   *fdConn
		fin *finState
	}{{s.client, &s.finClient}, {s.upstream, &s.finUpstream}} {
		if err := x.f.flush(); err != nil {
			return err
		}
		if *x.fin == finWanted && len(x.f.out) == 0 {
			if err := x.f.CloseWrite(); err != nil && err != unix.ENOTCONN {
				return err
			}
			*x.fin = finSent
		}
	}
	return nil
}

// boundUpstream bounds the upstream's silence once the client has
// finished sending. A PostgreSQL client never half-closes: its session is
// over and the server, which sees EOF, closes at once; give it the connect
// timeout. A Redis client may still be reading replies.
func (s *session) boundUpstream() {
	s.c.clientDone.Store(true)
	s.idle, s.idleTotal = redisHalfCloseIdle, false
	if s.pg {
		s.idle, s.idleTotal = s.c.snap.Config.Limits.UpstreamConnectTimeout, true
	}
	s.last = time.Now()
	s.timer = time.AfterFunc(s.idle, func() { s.l.post(loopCmd{kind: cmdTimer, s: s}) })
}

// checkIdle ends the session if the upstream's bound has passed.
func (s *session) checkIdle() {
	left := s.idle - time.Since(s.last)
	if left <= 0 {
		s.end(os.ErrDeadlineExceeded)
		return
	}
	s.timer.Reset(left)
}

// startCut begins a cut that conn.cut asked for: at once if the server's
// stream is between two messages, else at the next boundary (step), or
// when cutGrace runs out (conn.cut's timer aborts).
func (s *session) startCut() {
	s.cutting = true
	if !s.pg || s.framer.atBoundary() || s.upstreamEOF {
		if s.pg && !s.upstreamEOF {
			s.c.sendCutNotice()
		}
		s.end(errCut)
	}
}

// end takes the session out of the loop and finishes the connection on a
// goroutine of its own: sending what is still queued may take a while.
func (s *session) end(err error) {
	s.done = true
	if s.timer != nil {
		s.timer.Stop()
	}
	s.l.remove(s)
	for _, f := range []*fdConn{s.client, s.upstream} {
		if len(f.out) > 0 {
			f.own() // off the loop's shared buffer
		} else {
			f.out = nil
		}
		f.detached = true
	}
	go s.c.finishSession(s, err)
}

// finishSession is the end of a connection that ran on the loop.
func (c *conn) finishSession(s *session, err error) {
	s.client.drainOut(time.Second) // the last bytes, or a cut's FATAL
	s.upstream.Close()
	c.finish(err)
	c.srv.wg.Done()
}
