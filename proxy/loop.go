package proxy

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event loop. Once a connection is admitted and its upstream dialled,
// its two sockets leave the Go runtime's poller for one of these loops: a
// goroutine around an edge-triggered epoll set, the model of HAProxy and
// PgBouncer. A session then costs no goroutine, no stack and no wake-up of
// its own: the loop reads what epoll says is there, and a read that comes
// back short is the last one until the next edge. Profiles of the
// goroutine-per-direction splice it replaced showed 70-80% of the gate's
// CPU in read and write calls, a third of the reads finding the socket
// empty, and a tenth in scheduler wake-ups (README.md, Performance).

// loopReadBuf is the loop's read buffer, shared by its sessions: one read
// at a time per loop, so an idle session holds no buffer at all. 64 KiB
// lets one read take what a busy server has queued, and one write send it
// on as four TLS records.
const loopReadBuf = 64 << 10

// loopFairShare bounds what one session moves per wake-up, so a bulk
// transfer cannot starve the loop's other sessions; the rest waits for the
// next turn of the loop.
const loopFairShare = 256 << 10

// loops is the server's set of event loops, one per CPU the runtime uses.
type loops struct {
	ls   []*loop
	next atomic.Uint32
	wg   sync.WaitGroup
}

func startLoops(n int) (*loops, error) {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	ls := &loops{}
	for range n {
		l, err := newLoop()
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

// pick returns the loop for the next session, in turn.
func (ls *loops) pick() *loop {
	// Modulo in uint32: int(uint32) is negative past 2^31 on 32-bit builds.
	return ls.ls[ls.next.Add(1)%uint32(len(ls.ls))]
}

// stop ends the loops. Every session must have ended.
func (ls *loops) stop() {
	for _, l := range ls.ls {
		l.post(loopCmd{kind: cmdStop})
	}
	ls.wg.Wait()
}

type cmdKind uint8

const (
	cmdAdd   cmdKind = iota // start a session
	cmdAbort                // end a session now
	cmdCut                  // end a session at the next message boundary
	cmdTimer                // a session's idle bound may have passed
	cmdStop                 // end the loop
)

type loopCmd struct {
	kind cmdKind
	s    *session
}

// loop is one event loop. Only its goroutine touches its sessions.
type loop struct {
	epfd   int
	ep     *os.File        // epfd, as the runtime's poller sees it
	rc     syscall.RawConn // waits on ep
	wakefd int             // an eventfd: commands from other goroutines

	mu     sync.Mutex
	cmds   []loopCmd
	closed bool // wakefd is closed: a late post (a timer's) is dropped

	slots   []*session // by slot; nil when free
	free    []int32
	gen     int32      // tells a slot's sessions apart in stale events
	again   []*session // had more to do when their fair share ran out
	woken   []*session // scratch for dispatch
	readBuf []byte
	outBuf  []byte // the TLS output of one write, before it is sent
}

func newLoop() (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("event loop: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil { // pollable by the runtime
		unix.Close(epfd)
		return nil, fmt.Errorf("event loop: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("event loop: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("event loop: %w", err)
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
		return nil, fmt.Errorf("event loop: epoll set not pollable: %w", err)
	}
	return &loop{
		epfd:    epfd,
		ep:      ep,
		rc:      rc,
		wakefd:  wakefd,
		readBuf: make([]byte, loopReadBuf),
		outBuf:  make([]byte, 0, loopReadBuf+loopReadBuf/16),
	}, nil
}

// post hands the loop a command from any goroutine.
func (l *loop) post(c loopCmd) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.cmds = append(l.cmds, c)
	if len(l.cmds) == 1 {
		one := [8]byte{1}
		_, _ = unix.Write(l.wakefd, one[:])
	}
}

func (l *loop) run() {
	defer func() {
		l.mu.Lock()
		l.closed = true
		unix.Close(l.wakefd)
		l.mu.Unlock()
	}()
	defer l.ep.Close()
	events := make([]unix.EpollEvent, 128)
	for stop := false; !stop; {
		err := l.rc.Read(func(uintptr) bool {
			n, err := epollPoll(l.epfd, events)
			if err != nil {
				panic(fmt.Sprintf("proxy: epoll_wait: %v", err)) // only a bad epfd fails here
			}
			if n == 0 && len(l.again) == 0 {
				return false // park until the set has events
			}
			stop = l.dispatch(events[:n])
			return true
		})
		if err != nil {
			panic(fmt.Sprintf("proxy: event loop: %v", err))
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
		slot, side := ev.Fd>>1, ev.Fd&1
		s := l.slots[slot]
		if s == nil || s.gen != ev.Pad || s.done {
			continue // ended earlier in this batch
		}
		f := s.client.f
		if side == 1 {
			f = s.upstream.f
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
			s.pumpGuarded()
		}
	}
	clear(woken)
	l.woken = woken[:0]
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
		stop = l.runCmd(c) || stop
	}
	return stop
}

// runCmd runs one posted command and reports whether the loop must stop.
// A panic in a session's command ends that session only.
func (l *loop) runCmd(c loopCmd) (stop bool) {
	if c.s != nil {
		defer c.s.recoverPanic()
	}
	switch c.kind {
	case cmdAdd:
		l.add(c.s)
	case cmdAbort:
		if !c.s.done && c.s.l == l {
			c.s.end(errAborted)
		}
	case cmdCut:
		if !c.s.done && c.s.l == l {
			c.s.startCut()
		}
	case cmdTimer:
		if !c.s.done && c.s.l == l {
			c.s.checkIdle()
		}
	case cmdStop:
		return true
	}
	return false
}

// add registers a session's two sockets and runs it once: the client's
// tls.Conn may already hold bytes read during the start-up.
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
	s.slot, s.gen = slot, l.gen
	for side, f := range []*fdConn{s.client.f, s.upstream.f} {
		ev := unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
			Fd:     slot<<1 | int32(side),
			Pad:    s.gen,
		}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, f.fd, &ev); err != nil {
			s.end(fmt.Errorf("event loop: %w", err))
			return
		}
		f.shared = l.outBuf
	}
	if s.c.cutting.Load() {
		// Cut before the loop took the session: cut saw no session to
		// post to. (A later cut posts cmdCut, which comes after cmdAdd.)
		s.startCut()
		if s.done {
			return
		}
	}
	s.c.srv.hook(s.c, hookLoopAdd)
	s.pump()
}

// remove takes a session's sockets out of the loop.
func (l *loop) remove(s *session) {
	for _, f := range []*fdConn{s.client.f, s.upstream.f} {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, f.fd, nil)
		f.shared = nil
	}
	l.slots[s.slot] = nil
	l.free = append(l.free, s.slot)
}
