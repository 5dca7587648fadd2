package splice

import (
	"errors"
	"io"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// errWouldBlock is what a taken Conn's Read returns when the socket has
// nothing to read. It is a timeout, so crypto/tls keeps a partial record
// and does not make the error sticky: the next Read resumes.
var errWouldBlock error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "splice: socket would block" }
func (wouldBlockError) Timeout() bool   { return true }
func (wouldBlockError) Temporary() bool { return true }

// dupFd returns a duplicate of the descriptor under c, which shares its
// socket and O_NONBLOCK, or ok false if c has none.
func (c *Conn) dupFd() (fd int, ok bool, err error) {
	rc, ok := c.rawConn()
	if !ok {
		return -1, false, nil
	}
	fd = -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, false, nil // closed, or not a descriptor after all
	}
	if derr != nil {
		return -1, false, derr
	}
	return fd, true, nil
}

// adopt makes fd, a duplicate of the wrapped conn's descriptor, the Conn's
// socket, and closes the wrapped conn: that takes the socket out of the
// runtime's poller without ending it.
func (c *Conn) adopt(fd int) {
	c.nc.Close()
	c.fd, c.taken, c.writable = fd, true, true
}

func (c *Conn) takenRead(p []byte) (int, error) {
	if c.fd < 0 {
		return 0, net.ErrClosed
	}
	if !c.readable {
		return 0, errWouldBlock
	}
	n, err := c.read(p)
	if n < len(p) && !c.hup {
		c.readable = false
	}
	if err == unix.EAGAIN {
		c.readable = false
		return 0, errWouldBlock
	}
	return n, err
}

// read is one read(2): io.EOF at the end of the stream.
func (c *Conn) read(p []byte) (int, error) {
	for {
		n, err := rawRead(c.fd, p)
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

// takenWrite queues p. The loop's shared buffer takes the records of one
// tls.Conn call; the loop flushes right after every such call, and flush
// moves what the socket did not take to a buffer of the Conn's own, so no
// two Conns ever hold the shared buffer at once.
func (c *Conn) takenWrite(p []byte) (int, error) {
	if c.fd < 0 {
		return 0, net.ErrClosed
	}
	if c.out == nil && c.shared != nil {
		c.out, c.outOwned = c.shared[:0], false
	}
	c.out = append(c.out, p...)
	return len(p), nil
}

// send writes p now if nothing is queued before it, and queues what the
// socket does not take: plaintext needs no copy on a complete write.
func (c *Conn) send(p []byte) error {
	if len(c.out) > 0 || !c.writable {
		c.out = append(c.own(), p...)
		return nil
	}
	n, err := c.write(p)
	if n < len(p) {
		c.writable = false
		c.out = append(c.own(), p[n:]...)
	}
	return err
}

// flush writes what is queued, as far as the socket takes it. What is
// left moves off the loop's shared buffer, which the next session uses.
func (c *Conn) flush() error {
	if len(c.out) == 0 {
		c.out, c.outOwned = nil, false
		return nil
	}
	if c.writable {
		n, err := c.write(c.out)
		if n == len(c.out) {
			c.out, c.outOwned = nil, false
			return err
		}
		c.writable = false
		c.out = c.out[n:]
		if err != nil {
			return err
		}
	}
	c.own()
	return nil
}

// own returns out as a slice the Conn owns, for appending.
func (c *Conn) own() []byte {
	if !c.outOwned && c.out != nil {
		c.out = append([]byte(nil), c.out...)
	}
	c.outOwned = true
	return c.out
}

// write is one write(2); EAGAIN is a short write, not an error.
func (c *Conn) write(p []byte) (int, error) {
	if c.fd < 0 {
		return 0, net.ErrClosed
	}
	for {
		n, err := rawWrite(c.fd, p)
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

func (c *Conn) takenCloseWrite() error {
	if c.fd < 0 {
		return net.ErrClosed
	}
	if err := unix.Shutdown(c.fd, unix.SHUT_WR); err != nil && !errors.Is(err, unix.ENOTCONN) {
		return err
	}
	return nil
}

func (c *Conn) takenClose() error {
	if c.fd < 0 {
		return net.ErrClosed
	}
	err := unix.Close(c.fd)
	c.fd = -1
	c.out, c.shared = nil, nil
	return err
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
