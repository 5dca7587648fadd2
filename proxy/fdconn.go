package proxy

import (
	"errors"
	"io"
	"net"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fdConn is a socket that can leave the Go runtime's poller for the
// gate's event loop (loop.go). Until takeover it passes every call to the
// net.Conn it wraps; this is how a client's tls.Conn sits on it through the
// handshake and the start-up checks. takeover then duplicates the socket's
// descriptor and closes the net.Conn, and from there on the loop drives the
// socket: Read does one non-blocking read, Write only queues bytes (the
// loop sends them with one system call per batch, however many TLS records
// it holds), and the deadline methods do nothing, as the loop keeps time.
type fdConn struct {
	net.Conn     // before takeover
	fd       int // after takeover; -1 before, and after Close
	taken    bool

	// readable: the socket may hold unread bytes. Set by the loop on an
	// edge-triggered EPOLLIN; cleared by a read that comes back short,
	// which means the socket was drained: a later arrival is a new edge.
	// This is what saves the read that would only find the socket empty.
	readable bool
	// hup: the peer has finished sending (EPOLLRDHUP). Its FIN may have
	// come with the last bytes, in the same edge, so a short read no
	// longer means there is nothing more to learn: the read that returns
	// EOF is still to come.
	hup      bool
	writable bool   // cleared by a short write, set by EPOLLOUT
	out      []byte // queued bytes not yet sent
	outOwned bool   // out is the conn's own, not the loop's shared buffer
	shared   []byte // the loop's buffer for out; nil outside the loop
	detached bool   // the loop has let go: Write sends at once, best effort
}

// errWouldBlock is what a taken-over fdConn's Read returns when the socket
// has nothing to read. It is a timeout, so crypto/tls keeps a partial
// record and does not make the error sticky: the next Read resumes.
var errWouldBlock error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "proxy: socket would block" }
func (wouldBlockError) Timeout() bool   { return true }
func (wouldBlockError) Temporary() bool { return true }

func newFdConn(nc net.Conn) *fdConn { return &fdConn{Conn: nc, fd: -1} }

// dupFd returns a duplicate of the descriptor under nc, which shares its
// socket and O_NONBLOCK.
func dupFd(nc net.Conn) (int, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1, errors.New("proxy: connection has no descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	return fd, derr
}

// adopt makes fd, a duplicate of nc's descriptor, the fdConn's socket and
// closes nc, which takes the socket out of the runtime's poller without
// ending it.
func (f *fdConn) adopt(fd int, nc net.Conn) {
	nc.Close()
	f.fd, f.taken, f.writable = fd, true, true
}

func (f *fdConn) Read(p []byte) (int, error) {
	if !f.taken {
		return f.Conn.Read(p)
	}
	if f.fd < 0 {
		return 0, net.ErrClosed
	}
	if !f.readable {
		return 0, errWouldBlock
	}
	n, err := f.read(p)
	if n < len(p) && !f.hup {
		f.readable = false
	}
	if err == unix.EAGAIN {
		return 0, errWouldBlock
	}
	return n, err
}

// read is one read(2): io.EOF at the end of the stream.
func (f *fdConn) read(p []byte) (int, error) {
	for {
		n, err := rawRead(f.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, err
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

func (f *fdConn) Write(p []byte) (int, error) {
	if !f.taken {
		return f.Conn.Write(p)
	}
	if f.fd < 0 {
		return 0, net.ErrClosed
	}
	if f.detached {
		// After the loop: a close_notify from tls.Conn.Close. The socket
		// takes it or it is dropped; nothing waits on a leaving client.
		f.out = append(f.out, p...)
		return len(p), f.flush()
	}
	// The loop's shared buffer takes the records of one tls.Conn call;
	// the loop flushes right after every such call (and flush moves what
	// the socket did not take to a buffer of the conn's own), so no two
	// conns ever hold it at once.
	if f.out == nil && f.shared != nil {
		f.out, f.outOwned = f.shared[:0], false
	}
	f.out = append(f.out, p...)
	return len(p), nil
}

// send writes p now if nothing is queued before it, and queues what the
// socket does not take: the path of plaintext towards the upstream, which
// needs no copy on the common, complete write.
func (f *fdConn) send(p []byte) error {
	if len(f.out) > 0 || !f.writable {
		f.out = append(f.own(), p...)
		return nil
	}
	n, err := f.write(p)
	if n < len(p) {
		f.writable = false
		f.out = append(f.own(), p[n:]...)
	}
	return err
}

// flush writes what is queued, as far as the socket takes it. What is
// left moves off the loop's shared buffer, which the next session uses.
func (f *fdConn) flush() error {
	if len(f.out) == 0 {
		return nil
	}
	if f.writable {
		n, err := f.write(f.out)
		if n == len(f.out) {
			f.out, f.outOwned = nil, false
			return err
		}
		f.writable = false
		f.out = f.out[n:]
		if err != nil {
			return err
		}
	}
	f.own()
	return nil
}

// own returns out as a slice the fdConn owns, for appending.
func (f *fdConn) own() []byte {
	if !f.outOwned && f.out != nil {
		f.out = append([]byte(nil), f.out...)
	}
	f.outOwned = true
	return f.out
}

// write is one write(2); EAGAIN is a short write, not an error.
func (f *fdConn) write(p []byte) (int, error) {
	for {
		n, err := rawWrite(f.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, nil
		case err != nil:
			return 0, err
		}
		return n, nil
	}
}

// drainOut waits up to d for the socket to take what is queued: the last
// bytes of a session, a cut's FATAL, sent after the loop let go.
func (f *fdConn) drainOut(d time.Duration) {
	deadline := time.Now().Add(d)
	for len(f.out) > 0 && f.fd >= 0 {
		if err := f.flush(); err != nil {
			return
		}
		if len(f.out) == 0 {
			return
		}
		left := time.Until(deadline)
		if left <= 0 {
			return
		}
		pfd := []unix.PollFd{{Fd: int32(f.fd), Events: unix.POLLOUT}}
		if _, err := unix.Poll(pfd, int(left.Milliseconds())+1); err != nil && err != unix.EINTR {
			return
		}
		f.writable = true
	}
}

// CloseWrite sends FIN, after what is queued.
func (f *fdConn) CloseWrite() error {
	if !f.taken {
		if cw, ok := f.Conn.(interface{ CloseWrite() error }); ok {
			return cw.CloseWrite()
		}
		return nil
	}
	if f.fd < 0 {
		return net.ErrClosed
	}
	return unix.Shutdown(f.fd, unix.SHUT_WR)
}

func (f *fdConn) Close() error {
	if !f.taken {
		return f.Conn.Close()
	}
	if f.fd < 0 {
		return net.ErrClosed
	}
	err := unix.Close(f.fd)
	f.fd = -1
	return err
}

// The loop keeps time for a taken-over socket.

func (f *fdConn) SetDeadline(t time.Time) error {
	if !f.taken {
		return f.Conn.SetDeadline(t)
	}
	return nil
}

func (f *fdConn) SetReadDeadline(t time.Time) error {
	if !f.taken {
		return f.Conn.SetReadDeadline(t)
	}
	return nil
}

func (f *fdConn) SetWriteDeadline(t time.Time) error {
	if !f.taken {
		return f.Conn.SetWriteDeadline(t)
	}
	return nil
}

// rawRead and rawWrite are read(2) and write(2) on a non-blocking socket.
// They never block, so they skip the runtime's system call bookkeeping,
// which would otherwise let sysmon hand the loop's P to another thread
// while the kernel runs a loopback write's receive path.
func rawRead(fd int, p []byte) (int, error)  { return rawIO(unix.SYS_READ, fd, p) }
func rawWrite(fd int, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p) }

func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(ptr), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
