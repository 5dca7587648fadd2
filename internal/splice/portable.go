package splice

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The portable engine: a session runs on two goroutines, one per
// direction, each blocked in the runtime's poller while its source is
// quiet. It keeps the contract of the event loops with the tools of a
// net.Conn: deadlines wake a reader for a cut, a bound or a close.

// Copy buffers. Each direction reads into its own small buffer, so that an
// idle session, blocked in a read, holds only that. A read that fills it
// means bulk data is flowing, and the direction switches to a pooled large
// buffer until reads are small again. One TLS record holds at most 16 KiB
// of plaintext, so a larger buffer buys no fewer system calls.
const (
	portableSmallBufSize = 1 << 10
	portableBufSize      = 32 << 10
)

// copyBuf is one direction's copy buffer, owned by one goroutine.
type copyBuf struct {
	small []byte
	big   *[]byte
	pool  *sync.Pool
}

// next returns the buffer for the next read, given how much the last one
// read (0 before the first).
func (b *copyBuf) next(last int) []byte {
	switch {
	case b.small == nil:
		b.small = make([]byte, portableSmallBufSize)
	case b.big == nil && last == len(b.small):
		b.big = b.pool.Get().(*[]byte)
	case b.big != nil && last < len(b.small):
		b.release()
	}
	if b.big != nil {
		return *b.big
	}
	return b.small
}

// release returns the large buffer to the pool.
func (b *copyBuf) release() {
	if b.big != nil {
		b.pool.Put(b.big)
		b.big = nil
	}
}

// portableSession is a session run by two goroutines.
type portableSession struct {
	e                *Engine
	h                Hooks
	client, upstream Side
	up, down         atomic.Int64
	cutting          atomic.Bool  // a cut waits for a boundary
	clientDone       atomic.Bool  // the client has finished sending
	silenceAt        atomic.Int64 // the upstream's silence bound, Unix ns; 0: none

	mu       sync.Mutex
	err      error // the first reason the session ends
	notice   []byte
	closing  bool // the client is being closed gracefully: its input is discarded
	downDone bool // the upstream's stream has ended and FIN went to the client
	ended    bool
	cutTimer *time.Timer
	lingerBy time.Time     // set with closing
	quit     chan struct{} // closed by end
	quitOnce sync.Once
}

// startPortable runs a session on goroutines. The engine's mu is held.
func (e *Engine) startPortable(pub *Session, client, upstream Side, h Hooks) {
	s := &portableSession{e: e, h: h, client: client, upstream: upstream, quit: make(chan struct{})}
	pub.impl = s
	e.live[s] = struct{}{}
	e.wg.Add(1)
	go s.run()
}

func (s *portableSession) run() {
	defer s.e.wg.Done()
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		s.clientToUpstream()
	}()
	s.upstreamToClient()
	<-upDone
	s.mu.Lock()
	s.ended = true
	if s.cutTimer != nil {
		s.cutTimer.Stop()
	}
	err := s.err
	s.mu.Unlock()
	s.client.Conn.Close()
	s.upstream.Conn.Close()
	s.e.mu.Lock()
	delete(s.e.live, s)
	s.e.mu.Unlock()
	s.e.report(s.h, Stats{Up: s.up.Load(), Down: s.down.Load()}, err)
}

// setErr records why the session ends; the first reason wins.
func (s *portableSession) setErr(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}

func (s *portableSession) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// end closes both sockets now, which ends every read and write.
func (s *portableSession) end(err error) {
	s.setErr(err)
	s.quitOnce.Do(func() { close(s.quit) })
	s.client.Conn.Close()
	s.upstream.Conn.Close()
}

func (s *portableSession) abort() { s.end(ErrAborted) }

func (s *portableSession) cut(notice []byte) {
	s.mu.Lock()
	if s.closing || s.ended {
		s.mu.Unlock()
		return
	}
	s.notice = notice
	s.cutting.Store(true)
	s.cutTimer = time.AfterFunc(s.h.CutGrace, func() { s.end(errCutAborted) })
	downDone := s.downDone
	s.mu.Unlock()
	if downDone {
		s.closeClient(ErrCut, nil) // the client's stream has ended
		return
	}
	// Wake the upstream's reader, the only writer to the client, so that
	// it sends the notice itself at a boundary.
	_ = s.upstream.Conn.SetReadDeadline(time.Now())
}

// closeClient ends the session gracefully: the upstream is closed now; the
// client gets notice, close_notify and FIN, and clientToUpstream discards
// its input until it closes or the linger bounds pass.
func (s *portableSession) closeClient(err error, notice []byte) {
	s.mu.Lock()
	if s.closing || s.ended {
		s.mu.Unlock()
		return
	}
	s.closing = true
	s.lingerBy = time.Now().Add(LingerTime)
	if s.err == nil {
		s.err = err
	}
	if s.cutTimer != nil {
		s.cutTimer.Stop()
	}
	downDone := s.downDone
	s.mu.Unlock()
	s.upstream.Conn.Close()
	deadline := s.lingerBy
	c := s.client.Conn
	_ = c.SetWriteDeadline(deadline)
	if !downDone {
		if len(notice) > 0 {
			_, _ = s.client.writer().Write(notice)
		}
		closeWrite(s.client)
	}
	_ = c.SetReadDeadline(deadline)
}

// boundary asks the framer where the current message ends in p.
func (s *portableSession) boundary(p []byte) (int, bool) {
	if s.h.Framer == nil {
		return 0, true
	}
	return s.h.Framer.Boundary(p)
}

// clientToUpstream copies the client's stream, and discards it once the
// client is being closed.
func (s *portableSession) clientToUpstream() {
	defer s.e.recoverPanic(func(pe *PanicError) { s.end(pe) })
	b := copyBuf{pool: &s.e.bufs}
	defer b.release()
	buf := b.next(0)
	discarded := 0
	for {
		n, rerr := s.client.reader().Read(buf)
		if n > 0 {
			if s.isClosing() {
				if discarded += n; discarded >= LingerBytes {
					s.holdFlood()
					return
				}
			} else {
				s.forward(buf[:n])
			}
		}
		buf = b.next(n)
		if rerr != nil {
			if s.isClosing() {
				return // its EOF, or the linger bound
			}
			if !errors.Is(rerr, io.EOF) {
				s.end(rerr)
				return
			}
			s.clientDone.Store(true)
			closeWrite(s.upstream)
			if d := s.h.Silence; d > 0 {
				at := time.Now().Add(d)
				s.silenceAt.Store(at.UnixNano())
				_ = s.upstream.Conn.SetReadDeadline(at)
			}
			return
		}
	}
}

// forward sends the client's bytes on to the upstream.
func (s *portableSession) forward(p []byte) {
	if s.h.ClientStream != nil {
		s.h.ClientStream.Advance(p)
	}
	if _, werr := s.upstream.writer().Write(p); werr != nil {
		// The upstream failed: the client is closed gracefully, and
		// clientToUpstream discards its input meanwhile.
		s.closeClient(werr, nil)
		return
	}
	s.up.Add(int64(len(p)))
}

// holdFlood stops reading a client that sent LingerBytes since its close
// began: TCP then holds it (its writes block, they do not fail) while it
// reads the notice, until lingerBy. Closing with its bytes unread would
// answer them with a reset, which can overtake the notice.
func (s *portableSession) holdFlood() {
	s.mu.Lock()
	by := s.lingerBy
	s.mu.Unlock()
	t := time.NewTimer(time.Until(by))
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.quit:
	}
}

// upstreamToClient copies the upstream's stream, follows its framing, and
// ends it at a boundary when cut.
func (s *portableSession) upstreamToClient() {
	defer s.e.recoverPanic(func(pe *PanicError) { s.end(pe) })
	b := copyBuf{pool: &s.e.bufs}
	defer b.release()
	buf := b.next(0)
	for {
		n, rerr := s.upstream.reader().Read(buf)
		data := buf[:n]
		if s.cutting.Load() {
			if k, ok := s.boundary(data); ok {
				if _, err := s.client.writer().Write(data[:k]); err == nil {
					s.down.Add(int64(k))
				}
				s.mu.Lock()
				notice := s.notice
				s.mu.Unlock()
				s.closeClient(ErrCut, notice)
				return
			}
		}
		if n > 0 {
			if s.h.Framer != nil {
				s.h.Framer.Advance(data)
			}
			if at := s.silenceAt.Load(); at != 0 && s.h.SilenceIdle {
				next := time.Now().Add(s.h.Silence)
				s.silenceAt.Store(next.UnixNano())
				_ = s.upstream.Conn.SetReadDeadline(next)
			}
			if _, werr := s.client.writer().Write(data); werr != nil {
				if !s.isClosing() {
					s.end(werr)
				}
				return
			}
			s.down.Add(int64(n))
		}
		buf = b.next(n)
		if rerr == nil {
			continue
		}
		if s.isClosing() {
			return
		}
		var ne net.Error
		if errors.As(rerr, &ne) && ne.Timeout() {
			at := s.silenceAt.Load()
			if at != 0 && time.Now().UnixNano() >= at {
				s.closeClient(fmt.Errorf("splice: upstream silent for %v after the client finished: %w", s.h.Silence, os.ErrDeadlineExceeded), nil)
				return
			}
			if s.cutting.Load() || at != 0 {
				// Woken for a cut in the middle of a message, or an idle
				// bound that moved: read on.
				var dl time.Time
				if at != 0 {
					dl = time.Unix(0, at)
				}
				_ = s.upstream.Conn.SetReadDeadline(dl)
				continue
			}
		}
		if !errors.Is(rerr, io.EOF) {
			if notice := s.lost(rerr); notice != nil {
				s.closeClient(fmt.Errorf("%w: %w", ErrUpstreamLost, rerr), notice)
			} else {
				s.closeClient(rerr, nil)
			}
			return
		}
		if notice := s.lost(nil); notice != nil {
			s.closeClient(ErrUpstreamLost, notice)
			return
		}
		// Under mu with cut's look at downDone: one of the two sees the other.
		s.mu.Lock()
		s.downDone = true
		cutting := s.cutting.Load()
		s.mu.Unlock()
		if cutting {
			s.closeClient(ErrCut, nil) // no boundary can come now
			return
		}
		closeWrite(s.client)
		return
	}
}

// lost asks Hooks.UpstreamLost for the notice of an upstream whose stream
// ended (err nil: EOF) while the session was live and the client still
// sending; nil: none. Only upstreamToClient asks, at most once, as it
// returns.
func (s *portableSession) lost(err error) []byte {
	if s.h.UpstreamLost == nil || s.cutting.Load() || s.clientDone.Load() {
		return nil // not a loss; or the client finished first, and this is the answer
	}
	s.mu.Lock()
	live := !s.closing && !s.ended && s.err == nil
	s.mu.Unlock()
	if !live {
		return nil // cut, closing, or ended by end (an abort, Stop, a panic)
	}
	if notice := s.h.UpstreamLost(err); len(notice) > 0 {
		return notice
	}
	return nil
}

func (x Side) reader() io.Reader {
	if x.TLS != nil {
		return x.TLS
	}
	return x.Conn
}

func (x Side) writer() io.Writer {
	if x.TLS != nil {
		return x.TLS
	}
	return x.Conn
}

// closeWrite half-closes a side: TLS close_notify, then FIN.
func closeWrite(x Side) {
	if x.TLS != nil {
		_ = x.TLS.CloseWrite()
	}
	_ = x.Conn.CloseWrite()
}

// gracefulClose is Engine.Close on a goroutine: notice, close_notify and
// FIN, then the client's input discarded within the linger bounds.
func gracefulClose(x Side, notice []byte) {
	deadline := time.Now().Add(LingerTime)
	c := x.Conn
	_ = c.SetWriteDeadline(deadline)
	if len(notice) > 0 {
		_, _ = x.writer().Write(notice)
	}
	closeWrite(x)
	_ = c.SetReadDeadline(deadline)
	if n, _ := io.Copy(io.Discard, io.LimitReader(c, LingerBytes)); n == LingerBytes {
		// A flood: hold it unread until the deadline (see holdFlood).
		t := time.NewTimer(time.Until(deadline))
		<-t.C
	}
	c.Close()
}
