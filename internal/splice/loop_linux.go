package splice

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// loopReadBuf is a loop's read buffer, shared by its sessions: one read at
// a time per loop, so an idle session holds no buffer at all. 64 KiB lets
// one read take what a busy server has queued, and one write send it on as
// four TLS records.
const loopReadBuf = 64 << 10

// loopFairShare bounds what one session moves per turn, so a bulk transfer
// cannot starve the loop's other sessions; the rest waits for the next
// turn of the loop.
const loopFairShare = 256 << 10

// loopSet is an engine's event loops.
type loopSet struct {
	ls   []*loop
	next atomic.Uint32
	wg   sync.WaitGroup
}

func startLoops(e *Engine, n int) (*loopSet, error) {
	ls := &loopSet{}
	for range n {
		l, err := newLoop(e)
		if err != nil {
			ls.stop()
			return nil, err
		}
		ls.ls = append(ls.ls, l)
		ls.wg.Add(1)
		go func() {
			defer ls.wg.Done()
			l.run()
		}()
	}
	return ls, nil
}

// stop ends the loops; each ends its sessions first.
func (ls *loopSet) stop() {
	for _, l := range ls.ls {
		l.post(loopCmd{kind: cmdStop})
	}
	ls.wg.Wait()
}

// add starts a session on a loop: both Conns are taken over, and the loop
// runs it. With upstream.Conn nil it is a Close of the client with notice.
// It reports false, having taken nothing, when a Conn has no descriptor or
// no loop is left. The engine's mu is held.
func (ls *loopSet) add(pub *Session, client, upstream Side, h Hooks, notice []byte) (bool, error) {
	var l *loop
	for range ls.ls {
		// Modulo in uint32: int(uint32) is negative past 2^31 on 32-bit builds.
		c := ls.ls[ls.next.Add(1)%uint32(len(ls.ls))]
		if !c.failed.Load() {
			l = c
			break
		}
	}
	if l == nil {
		return false, nil
	}
	cfd, ok, err := client.Conn.dupFd()
	if !ok || err != nil {
		return false, err
	}
	ufd := -1
	if upstream.Conn != nil {
		ufd, ok, err = upstream.Conn.dupFd()
		if !ok || err != nil {
			unix.Close(cfd)
			return false, err
		}
	}
	s := &session{e: l.e, l: l, pub: pub, h: h, closeOnly: upstream.Conn == nil, notice: notice}
	s.client = side{f: client.Conn, tls: client.TLS}
	s.client.f.adopt(cfd)
	// Either tls.Conn may hold bytes it has read already: look.
	s.client.f.readable = true
	if !s.closeOnly {
		s.upstream = side{f: upstream.Conn, tls: upstream.TLS}
		s.upstream.f.adopt(ufd)
		s.upstream.f.readable = upstream.TLS != nil
	}
	if pub != nil {
		pub.impl = s
	}
	l.e.wg.Add(1) // Done once OnEnd returns
	if !l.post(loopCmd{kind: cmdAdd, s: s}) {
		// The loop failed a moment ago: end here, the session never ran.
		s.closeSockets()
		s.done = true
		l.e.reportAsync(h, Stats{}, fmt.Errorf("splice: event loop: %w", ErrStopped))
	}
	return true, nil
}

type cmdKind uint8

const (
	cmdAdd   cmdKind = iota // start a session
	cmdAbort                // end a session now
	cmdCut                  // end a session at the next boundary
	cmdTimer                // a session's deadline may have passed
	cmdStop                 // end the loop
)

type loopCmd struct {
	kind   cmdKind
	s      *session
	notice []byte // cmdCut
}

// loop is one event loop. Only its goroutine touches its sessions.
type loop struct {
	e      *Engine
	epfd   int
	ep     *os.File        // epfd, as the runtime's poller sees it
	rc     syscall.RawConn // waits on ep
	wakefd int             // an eventfd: commands from other goroutines
	failed atomic.Bool     // epoll failed: the loop takes no more sessions

	mu     sync.Mutex
	cmds   []loopCmd
	closed bool // the loop has ended: post refuses

	slots   []*session // by slot; nil when free
	free    []int32
	gen     int32      // tells a slot's sessions apart in stale events
	again   []*session // had more to do when their fair share ran out
	woken   []*session // scratch for dispatch
	readBuf []byte
	outBuf  []byte // the TLS output of one write, before it is sent
}

func newLoop(e *Engine) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("splice: event loop: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil { // pollable by the runtime
		unix.Close(epfd)
		return nil, fmt.Errorf("splice: event loop: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("splice: event loop: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("splice: event loop: %w", err)
	}
	// The epoll set itself waits in the runtime's poller: the loop parks
	// like any reader, holds no thread while idle, and makes no blocking
	// system call, which would have sysmon hand its P to another thread.
	ep := os.NewFile(uintptr(epfd), "epoll")
	rc, err := ep.SyscallConn()
	if err == nil {
		err = ep.SetReadDeadline(time.Time{}) // fails if the poller did not take it
	}
	if err != nil {
		ep.Close()
		unix.Close(wakefd)
		return nil, fmt.Errorf("splice: event loop: epoll set not pollable: %w", err)
	}
	return &loop{
		e:       e,
		epfd:    epfd,
		ep:      ep,
		rc:      rc,
		wakefd:  wakefd,
		readBuf: make([]byte, loopReadBuf),
		outBuf:  make([]byte, 0, loopReadBuf+loopReadBuf/16),
	}, nil
}

// post hands the loop a command from any goroutine. It reports false if
// the loop has ended.
func (l *loop) post(c loopCmd) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.cmds = append(l.cmds, c)
	if len(l.cmds) == 1 {
		one := [8]byte{1}
		_, _ = unix.Write(l.wakefd, one[:])
	}
	return true
}

func (l *loop) run() {
	defer l.ep.Close()
	events := make([]unix.EpollEvent, 128)
	var werr error
	for stop := false; !stop && werr == nil; {
		err := l.rc.Read(func(uintptr) bool {
			n, err := epollPoll(l.epfd, events)
			if err != nil {
				werr = err // only a bad epfd fails here
				return true
			}
			if n == 0 && len(l.again) == 0 {
				return false // park until the set has events
			}
			stop = l.dispatch(events[:n])
			return true
		})
		if err != nil && werr == nil {
			werr = err
		}
	}
	l.shutdown(werr)
}

// shutdown ends the loop: refuses further commands, ends the sessions of
// commands still queued and every live session, and closes the eventfd.
// A failed loop (err) reports it; its sessions end with it.
func (l *loop) shutdown(err error) {
	why := error(ErrStopped)
	if err != nil {
		l.failed.Store(true)
		why = fmt.Errorf("splice: event loop: %w", err)
		l.e.noteError(why)
	}
	l.mu.Lock()
	l.closed = true
	cmds := l.cmds
	l.cmds = nil
	unix.Close(l.wakefd)
	l.mu.Unlock()
	for _, c := range cmds {
		if c.kind == cmdAdd && !c.s.done {
			c.s.closeSockets()
			c.s.done = true
			l.e.reportAsync(c.s.h, c.s.stats, why)
		}
	}
	for _, s := range l.slots {
		if s != nil && !s.done {
			s.end(why)
		}
	}
}

// epollPoll is epoll_wait(2) that does not wait.
func epollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd),
			uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// dispatch notes what events say about each socket, runs posted commands,
// and pumps every session with something to do. It reports whether the
// loop must stop.
func (l *loop) dispatch(events []unix.EpollEvent) (stop bool) {
	woken := l.woken[:0]
	for i := range events {
		ev := &events[i]
		if ev.Fd < 0 {
			stop = l.runCmds() || stop
			continue
		}
		slot, which := ev.Fd>>1, ev.Fd&1
		if int(slot) >= len(l.slots) {
			continue
		}
		s := l.slots[slot]
		if s == nil || s.gen != ev.Pad || s.done {
			continue // ended earlier in this batch
		}
		f := s.client.f
		if which == 1 {
			f = s.upstream.f
		}
		if f == nil || f.fd < 0 {
			continue // closed earlier in this batch
		}
		if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
			f.readable = true
		}
		if ev.Events&(unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
			f.hup = true
		}
		if ev.Events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			f.writable = true
		}
		if !s.queued {
			s.queued = true
			woken = append(woken, s)
		}
	}
	for _, s := range l.again {
		if !s.queued {
			s.queued = true
			woken = append(woken, s)
		}
	}
	clear(l.again)
	l.again = l.again[:0]
	for _, s := range woken {
		s.queued = false
		if !s.done {
			s.guard((*session).pump)
		}
	}
	clear(woken)
	l.woken = woken[:0]
	if stop {
		for _, s := range l.slots {
			if s != nil && !s.done {
				s.end(ErrStopped)
			}
		}
	}
	return stop
}

// runCmds runs the posted commands and reports whether the loop must stop.
func (l *loop) runCmds() bool {
	var b [8]byte
	_, _ = unix.Read(l.wakefd, b[:])
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	l.mu.Unlock()
	stop := false
	for _, c := range cmds {
		if c.kind == cmdStop {
			stop = true
			continue
		}
		s := c.s
		if s.done {
			continue
		}
		switch c.kind {
		case cmdAdd:
			s.guard(l.add)
		case cmdAbort:
			s.end(ErrAborted)
		case cmdCut:
			s.guard(func(s *session) { s.startCut(c.notice) })
		case cmdTimer:
			s.guard((*session).checkTimers)
		}
	}
	return stop
}

// add registers a session's sockets and runs it once: a tls.Conn may
// already hold bytes read during the start-up.
func (l *loop) add(s *session) {
	var slot int32
	if k := len(l.free); k > 0 {
		slot, l.free = l.free[k-1], l.free[:k-1]
	} else {
		slot = int32(len(l.slots))
		l.slots = append(l.slots, nil)
	}
	l.slots[slot] = s
	l.gen++
	s.slot, s.gen, s.added = slot, l.gen, true
	for which, f := range []*Conn{s.client.f, s.upstream.f} {
		if f == nil {
			continue
		}
		ev := unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
			Fd:     slot<<1 | int32(which),
			Pad:    s.gen,
		}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, f.fd, &ev); err != nil {
			s.end(fmt.Errorf("splice: event loop: %w", err))
			return
		}
		f.shared = l.outBuf
	}
	if s.closeOnly {
		s.startClosing(nil, s.notice)
		return
	}
	s.pump()
}

// drop takes a socket out of the loop and closes it.
func (l *loop) drop(f *Conn) {
	if f == nil || f.fd < 0 {
		return
	}
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, f.fd, nil)
	f.takenClose()
}

// remove frees a session's slot.
func (l *loop) remove(s *session) {
	if s.added {
		l.slots[s.slot] = nil
		l.free = append(l.free, s.slot)
		s.added = false
	}
}
