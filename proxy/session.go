package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spacegate/spacegate/config"
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

	client, upstream side
	pg               bool
	framer           pgFramer // the server's stream, for cuts (PostgreSQL)
	cutting          bool

	// Once the client has finished sending, the upstream's silence is
	// bounded: idle since the last byte (Redis) or in total (PostgreSQL).
	idle  time.Duration
	last  time.Time
	timer *time.Timer
}

// side is one socket of a session, and the TLS over it if there is any.
type side struct {
	f   *fdConn
	tls *tls.Conn // nil: plaintext
	eof bool      // it has finished sending
	fin finState  // our half-close of it
}

// finState is the half-close of one socket: FIN is sent once what is
// queued before it has gone.
type finState uint8

const (
	finNone finState = iota
	finWanted
	finSent
)

func (x *side) read(p []byte) (int, error) {
	if x.tls == nil {
		return x.f.Read(p)
	}
	n, err := x.tls.Read(p)
	if len(x.f.out) > 0 {
		// A KeyUpdate answered while reading: send it now, as the
		// loop's shared buffer that holds it is the other side's next.
		if ferr := x.f.flush(); ferr != nil && err == nil {
			err = ferr
		}
	}
	return n, err
}

// write sends p: encrypted, in as many records as it takes and one system
// call, or as it is.
func (x *side) write(p []byte) error {
	if x.tls == nil {
		return x.f.send(p)
	}
	if _, err := x.tls.Write(p); err != nil {
		return err
	}
	return x.f.flush()
}

// closeWrite half-closes the side once what is queued has gone: a TLS
// close_notify, then FIN.
func (x *side) closeWrite() error {
	if x.tls != nil {
		_ = x.tls.CloseWrite() // queued
	}
	x.fin = finWanted
	return x.flush()
}

// flush sends what is queued, then a FIN that waited for it.
func (x *side) flush() error {
	if err := x.f.flush(); err != nil {
		return err
	}
	if x.fin == finWanted && len(x.f.out) == 0 {
		if err := x.f.CloseWrite(); err != nil && err != unix.ENOTCONN {
			return err
		}
		x.fin = finSent
	}
	return nil
}

// handOff moves a spliced connection to an event loop, if it can run
// there: TLS from the client over TCP, plain TCP or TLS over TCP to the
// upstream. The caller's goroutine then returns; the loop finishes the
// connection.
func (c *conn) handOff() error {
	ls := c.srv.loops
	if ls == nil || c.fd == nil || c.tlsConn == nil || c.client != c.tlsConn {
		return errors.ErrUnsupported
	}
	if pc, ok := c.fd.Conn.(*prefixConn); ok && len(pc.prefix) > 0 {
		return errors.ErrUnsupported
	}
	up := side{f: c.upFd}
	switch u := c.upstream.(type) {
	case *net.TCPConn:
		up.f = newFdConn(u)
	case *tls.Conn:
		up.tls = u
	default:
		return errors.ErrUnsupported
	}
	if up.f == nil {
		return errors.ErrUnsupported
	}
	cfd, err := dupFd(c.nc)
	if err != nil {
		return err
	}
	ufd, err := dupFd(up.f.Conn)
	if err != nil {
		unix.Close(cfd)
		return err
	}
	s := &session{
		c:        c,
		l:        ls.pick(),
		client:   side{f: c.fd, tls: c.tlsConn},
		upstream: up,
		pg:       c.lis.Protocol == config.ProtocolPostgres,
	}
	c.mu.Lock()
	if c.aborted {
		c.mu.Unlock()
		unix.Close(cfd)
		unix.Close(ufd)
		return net.ErrClosed
	}
	s.client.f.adopt(cfd, c.nc)
	s.upstream.f.adopt(ufd, s.upstream.f.Conn)
	if up.tls == nil {
		c.upstream = up.f // what finish closes
	}
	// Either tls.Conn may hold bytes it has read already: look.
	s.client.f.readable = true
	s.upstream.f.readable = up.tls != nil
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
	more, err := s.step()
	switch {
	case err != nil:
		s.end(err)
	case s.client.eof && s.upstream.eof && s.client.fin == finSent && s.upstream.fin == finSent:
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
	up, err := s.move(&s.client, &s.upstream, false)
	if err != nil {
		return false, err
	}
	down, err := s.move(&s.upstream, &s.client, true)
	if err != nil {
		return false, err
	}
	return up || down, s.flush()
}

// move copies from src to dst until src is drained, dst is backed up, or
// the fair share is spent (more). down is the server's stream to the
// client, whose PostgreSQL framing a cut follows; each read there is one
// TLS write and one system call.
func (s *session) move(src, dst *side, down bool) (more bool, err error) {
	buf := s.l.readBuf
	for budget := loopFairShare; !src.eof && len(dst.f.out) == 0; {
		if budget <= 0 {
			return true, nil
		}
		n, rerr := src.read(buf)
		if n > 0 {
			budget -= n
			data := buf[:n]
			if down {
				if s.cutting {
					if k, ok := s.framer.untilBoundary(data); ok {
						s.c.bytesDown += int64(k)
						_ = dst.write(data[:k])
						s.c.sendCutNotice()
						return false, errCut
					}
				}
				if s.pg {
					s.framer.advance(data)
				}
				if s.client.eof && !s.pg {
					s.last = time.Now() // Redis's bound is on idleness
				}
				s.c.bytesDown += int64(n)
			} else {
				s.c.bytesUp += int64(n)
			}
			if err := dst.write(data); err != nil {
				return false, err
			}
		}
		if rerr != nil {
			if errors.Is(rerr, errWouldBlock) {
				return false, nil
			}
			if !errors.Is(rerr, io.EOF) {
				return false, rerr
			}
			src.eof = true
			if down && s.cutting {
				return false, errCut // the server ended first; nothing to wait for
			}
			if err := dst.closeWrite(); err != nil {
				return false, err
			}
			if !down {
				s.boundUpstream()
			}
		}
	}
	return false, nil
}

// flush sends what is queued on both sides.
func (s *session) flush() error {
	if err := s.client.flush(); err != nil {
		return err
	}
	return s.upstream.flush()
}

// boundUpstream bounds the upstream's silence once the client has
// finished sending. A PostgreSQL client never half-closes: its session is
// over and the server, which sees EOF, closes at once; give it the connect
// timeout. A Redis client may still be reading replies.
func (s *session) boundUpstream() {
	s.idle = redisHalfCloseIdle
	if s.pg {
		s.idle = s.c.snap.Config.Limits.UpstreamConnectTimeout
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
	if !s.pg || s.framer.atBoundary() || s.upstream.eof {
		if s.pg && !s.upstream.eof {
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
	for _, f := range []*fdConn{s.client.f, s.upstream.f} {
		if len(f.out) > 0 {
			f.own() // off the loop's shared buffer
		} else {
			f.out = nil
		}
		f.detached = true
	}
	go s.c.finishSession(s, err)
}

// finishSession is the end of a connection that ran on the loop. finish
// closes both sockets.
func (c *conn) finishSession(s *session, err error) {
	defer c.srv.wg.Done()
	defer c.recoverPanic()
	c.srv.hook(c, hookFinish)
	s.client.f.drainOut(time.Second) // the last bytes, or a cut's FATAL
	c.finish(err)
}

// pumpGuarded is pump for the loop: a panic ends this session only.
func (s *session) pumpGuarded() {
	defer s.recoverPanic()
	s.pump()
}
