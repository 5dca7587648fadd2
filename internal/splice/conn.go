package splice

import (
	"net"
	"syscall"
	"time"
)

// Conn is a socket the engine can take over. Until then every call passes
// to the net.Conn it wraps, so a tls.Conn can run its handshake over it and
// the caller can read, write and set deadlines as usual. Once a session or
// a Close on an event loop took it over, the loop drives the socket: Read
// does one non-blocking read, Write only queues bytes for the loop to send
// with one system call per batch of TLS records, and deadlines do nothing,
// as the loop keeps time. Only the engine uses a Conn after it took it.
//
// To be taken over, the wrapped net.Conn must implement syscall.Conn; one
// that does not is run on goroutines.
type Conn struct {
	nc    net.Conn
	taken bool // the loop drives fd; nc is closed

	// After takeover; only the loop touches these.
	fd int // -1 before takeover and after close
	// readable: the socket may hold unread bytes. Set by an edge-triggered
	// EPOLLIN; cleared by a read that comes back short, which means the
	// socket was drained and a later arrival is a new edge. This saves the
	// read that would only find the socket empty.
	readable bool
	// hup: the peer has finished sending. Its FIN may have come with the
	// last bytes, in the same edge, so a short read no longer means there
	// is nothing more to learn: the read that returns EOF is still to come.
	hup      bool
	writable bool   // cleared by a short write, set by EPOLLOUT
	out      []byte // queued bytes not yet sent
	outOwned bool   // out is the Conn's own, not the loop's shared buffer
	shared   []byte // the loop's output buffer; nil off the loop
}

var _ net.Conn = (*Conn)(nil)

// Wrap returns a Conn over nc. The engine closes nc when it takes the
// socket over or ends its session.
func Wrap(nc net.Conn) *Conn { return &Conn{nc: nc, fd: -1} }

// NetConn returns the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

func (c *Conn) Read(p []byte) (int, error) {
	if c.taken {
		return c.takenRead(p)
	}
	return c.nc.Read(p)
}

func (c *Conn) Write(p []byte) (int, error) {
	if c.taken {
		return c.takenWrite(p)
	}
	return c.nc.Write(p)
}

// CloseWrite half-closes the socket (FIN) if the wrapped conn can.
func (c *Conn) CloseWrite() error {
	if c.taken {
		return c.takenCloseWrite()
	}
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *Conn) Close() error {
	if c.taken {
		return c.takenClose()
	}
	return c.nc.Close()
}

func (c *Conn) LocalAddr() net.Addr  { return c.nc.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

func (c *Conn) SetDeadline(t time.Time) error {
	if c.taken {
		return nil
	}
	return c.nc.SetDeadline(t)
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	if c.taken {
		return nil
	}
	return c.nc.SetReadDeadline(t)
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	if c.taken {
		return nil
	}
	return c.nc.SetWriteDeadline(t)
}

// rawConn returns the descriptor access of the wrapped conn, if it has one.
func (c *Conn) rawConn() (syscall.RawConn, bool) {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, false
	}
	return rc, true
}
