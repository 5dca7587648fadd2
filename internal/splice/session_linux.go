package splice

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// session is a session run by an event loop. Only the loop touches it
// once it is posted.
type session struct {
	e         *Engine
	l         *loop
	pub       *Session // nil for a Close
	h         Hooks
	slot, gen int32
	added     bool // holds its slot
	queued    bool // in this turn's list of sessions to pump
	done      bool // ended and reported: events and commands for it are stale

	client, upstream side // upstream.f is nil for a Close, and once cut
	closeOnly        bool // a Close: the client is closed with notice
	stats            Stats

	cutting bool      // a cut waits for a boundary
	notice  []byte    // of the cut, or of a Close
	cutBy   time.Time // then abort

	// The graceful close of the client: its input is discarded (up to
	// LingerBytes) until it closes, or lingerBy.
	closing   bool
	endErr    error // what OnEnd will say
	lingerBy  time.Time
	discarded int

	silenceAt time.Time // the upstream's silence bound; zero: none
	timer     *time.Timer
}

// side is one socket of a session, and the TLS over it if there is any.
type side struct {
	f   *Conn
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
		// A KeyUpdate answered while reading: send it now, as the loop's
		// shared buffer that holds it is the other side's next.
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
	if x.fin != finNone {
		return nil
	}
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
		if err := x.f.takenCloseWrite(); err != nil {
			return err
		}
		x.fin = finSent
	}
	return nil
}

// cut and abort are Session's, from any goroutine: the loop runs them in
// the order they were posted, after the session's add.
func (s *session) cut(notice []byte) { s.l.post(loopCmd{kind: cmdCut, s: s, notice: notice}) }
func (s *session) abort()            { s.l.post(loopCmd{kind: cmdAbort, s: s}) }

// guard runs fn on the loop: a panic in it ends this session only.
func (s *session) guard(fn func(*session)) {
	defer s.e.recoverPanic(func(pe *PanicError) {
		if !s.done {
			s.end(pe)
		}
	})
	fn(s)
}

// pump moves what can be moved now, and ends the session when both
// directions have.
func (s *session) pump() {
	if s.closing {
		s.pumpClosing()
		return
	}
	more, clientOK, err := s.step()
	switch {
	case s.done:
	case err != nil && clientOK:
		// The upstream failed or fell silent: the client still gets what
		// is queued for it, and a graceful close.
		s.startClosing(err, nil)
	case err != nil:
		s.end(err)
	case s.closing:
		// A cut found its boundary.
	case s.client.eof && s.upstream.eof && s.client.fin == finSent && s.upstream.fin == finSent:
		s.end(nil)
	case more:
		s.l.again = append(s.l.again, s)
	}
}

// step copies both ways until the sockets are drained, a destination is
// backed up, or the fair share is spent (more: call again). clientOK
// tells an error of the upstream's socket from one of the client's.
func (s *session) step() (more, clientOK bool, err error) {
	if err := s.client.flush(); err != nil {
		return false, false, err
	}
	if err := s.upstream.flush(); err != nil {
		return false, true, err
	}
	up, clientOK, err := s.move(&s.client, &s.upstream, false)
	if err != nil || s.closing || s.done {
		return false, clientOK, err
	}
	down, clientOK, err := s.move(&s.upstream, &s.client, true)
	if err != nil || s.closing || s.done {
		return false, clientOK, err
	}
	if err := s.client.flush(); err != nil {
		return false, false, err
	}
	if err := s.upstream.flush(); err != nil {
		return false, true, err
	}
	return up || down, true, nil
}

// move copies from src to dst until src is drained, dst is backed up, or
// the fair share is spent (more). down is the upstream's stream to the
// client, where a cut looks for its boundary; each read there is one TLS
// write and one system call.
func (s *session) move(src, dst *side, down bool) (more, clientOK bool, err error) {
	buf := s.l.readBuf
	for budget := loopFairShare; !src.eof && len(dst.f.out) == 0 && dst.fin == finNone; {
		if budget <= 0 {
			return true, true, nil
		}
		n, rerr := src.read(buf)
		if n > 0 {
			budget -= n
			data := buf[:n]
			if down {
				if s.cutting {
					if k, ok := s.boundary(data); ok {
						s.stats.Down += int64(k)
						if err := dst.write(data[:k]); err != nil {
							return false, false, err
						}
						s.startClosing(ErrCut, s.notice)
						return false, true, nil
					}
				}
				if s.h.Framer != nil {
					s.h.Framer.Advance(data)
				}
				if s.h.SilenceIdle && !s.silenceAt.IsZero() {
					s.silenceAt = time.Now().Add(s.h.Silence)
				}
				s.stats.Down += int64(n)
			} else {
				if s.h.ClientStream != nil {
					s.h.ClientStream.Advance(data)
				}
				s.stats.Up += int64(n)
			}
			if err := dst.write(data); err != nil {
				return false, !down, err
			}
		}
		if rerr != nil {
			if errors.Is(rerr, errWouldBlock) {
				return false, true, nil
			}
			if !errors.Is(rerr, io.EOF) {
				if notice := s.lost(down, rerr); notice != nil {
					s.startClosing(fmt.Errorf("%w: %w", ErrUpstreamLost, rerr), notice)
					return false, true, nil
				}
				return false, down, rerr
			}
			src.eof = true
			if down && s.cutting {
				// The upstream ended before a boundary came: nothing more
				// can complete the message, so the notice cannot follow.
				s.startClosing(ErrCut, nil)
				return false, true, nil
			}
			if notice := s.lost(down, nil); notice != nil {
				s.startClosing(ErrUpstreamLost, notice)
				return false, true, nil
			}
			if err := dst.closeWrite(); err != nil {
				return false, !down, err
			}
			if !down {
				s.boundSilence()
			}
		}
	}
	return false, true, nil
}

// lost asks Hooks.UpstreamLost for the notice of an upstream whose stream
// ended (err nil: EOF) while the session was live and the client still
// sending; nil: none. It is asked at most once: after it the upstream is
// read no more (src.eof, or closing).
func (s *session) lost(down bool, err error) []byte {
	if !down || s.h.UpstreamLost == nil || s.cutting || s.closing || s.client.eof {
		return nil // not a loss; or the client finished first, and this is the answer
	}
	if notice := s.h.UpstreamLost(err); len(notice) > 0 {
		return notice
	}
	return nil
}

// boundary asks the framer where the current message ends in p.
func (s *session) boundary(p []byte) (int, bool) {
	if s.h.Framer == nil {
		return 0, true
	}
	return s.h.Framer.Boundary(p)
}

// boundSilence bounds the upstream's silence once the client has finished
// sending.
func (s *session) boundSilence() {
	if s.h.Silence > 0 {
		s.silenceAt = time.Now().Add(s.h.Silence)
		s.armTimer()
	}
}

// startCut begins a cut: at once if the upstream's stream is at a
// boundary, else at the next one (move), or abort at cutBy.
func (s *session) startCut(notice []byte) {
	if s.closing {
		return
	}
	s.notice = notice
	if s.upstream.eof || s.client.fin != finNone {
		s.startClosing(ErrCut, nil) // the client's stream has ended
		return
	}
	if _, ok := s.boundary(nil); ok {
		s.startClosing(ErrCut, notice)
		return
	}
	s.cutting = true
	s.cutBy = time.Now().Add(s.h.CutGrace)
	s.armTimer()
}

// startClosing ends the session gracefully: the upstream is closed now;
// the client gets what is queued, notice, close_notify and FIN, and its
// input is discarded until it closes or the linger bounds pass.
func (s *session) startClosing(err error, notice []byte) {
	s.endErr = err
	s.cutting = false
	s.silenceAt = time.Time{}
	s.l.drop(s.upstream.f)
	s.upstream.eof = true
	c := &s.client
	if c.fin == finNone && len(notice) > 0 {
		if werr := c.write(notice); werr != nil {
			s.end(err)
			return
		}
	}
	if werr := c.closeWrite(); werr != nil {
		s.end(err)
		return
	}
	s.closing = true
	s.lingerBy = time.Now().Add(LingerTime)
	s.armTimer()
	s.pumpClosing()
}

// pumpClosing sends what is queued for the client and discards its input,
// up to LingerBytes. Past that it stops reading, so that TCP holds a client
// that floods (its writes block, they do not fail) until it has read the
// notice and closed, or until lingerBy: closing with its bytes unread
// would answer them with a reset, which can overtake the notice.
func (s *session) pumpClosing() {
	c := &s.client
	if err := c.flush(); err != nil {
		s.end(s.endErr)
		return
	}
	buf := s.l.readBuf
	for !c.eof && s.discarded < LingerBytes {
		n, err := c.f.Read(buf[:min(len(buf), LingerBytes-s.discarded)])
		s.discarded += n
		if errors.Is(err, errWouldBlock) {
			break
		}
		if errors.Is(err, io.EOF) {
			c.eof = true
		} else if err != nil {
			s.end(s.endErr)
			return
		}
	}
	if c.fin == finSent && (c.eof || c.f.hup) {
		s.end(s.endErr)
	}
}

// checkTimers ends the session if one of its deadlines has passed, else
// waits for the next.
func (s *session) checkTimers() {
	now := time.Now()
	switch {
	case s.closing && !now.Before(s.lingerBy):
		s.end(s.endErr)
	case s.cutting && !now.Before(s.cutBy):
		s.end(errCutAborted)
	case !s.silenceAt.IsZero() && !now.Before(s.silenceAt):
		s.startClosing(fmt.Errorf("splice: upstream silent for %v after the client finished: %w", s.h.Silence, os.ErrDeadlineExceeded), nil)
	default:
		s.armTimer()
	}
}

// armTimer sets the session's timer to its earliest deadline.
func (s *session) armTimer() {
	var at time.Time
	switch {
	case s.closing:
		at = s.lingerBy
	case s.cutting && (s.silenceAt.IsZero() || s.cutBy.Before(s.silenceAt)):
		at = s.cutBy
	case !s.silenceAt.IsZero():
		at = s.silenceAt
	default:
		return
	}
	d := time.Until(at)
	if s.timer == nil {
		s.timer = time.AfterFunc(d, func() { s.l.post(loopCmd{kind: cmdTimer, s: s}) })
		return
	}
	s.timer.Reset(d)
}

// end closes both sockets, frees the slot and reports, once.
func (s *session) end(err error) {
	if s.done {
		return
	}
	s.done = true
	if s.timer != nil {
		s.timer.Stop()
	}
	s.l.remove(s)
	s.l.drop(s.client.f)
	s.l.drop(s.upstream.f)
	s.e.reportAsync(s.h, s.stats, err)
}

// closeSockets closes the sockets of a session that never ran.
func (s *session) closeSockets() {
	for _, f := range []*Conn{s.client.f, s.upstream.f} {
		if f != nil && f.fd >= 0 {
			f.takenClose()
		}
	}
}
