package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// floodDialTimeout bounds one flood dial, as a full accept queue
	// drops SYNs and the kernel retries them for a long while.
	floodDialTimeout = 3 * time.Second
	// floodBackoff is how long a flood socket waits after a failed dial,
	// so that a refused port does not make it spin.
	floodBackoff = 10 * time.Millisecond
	// helloReadTimeout bounds the wait for the server's first flight.
	helloReadTimeout = 5 * time.Second
	// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h): bind
	// the source address but leave the port to connect, which then picks
	// one per destination instead of one per source address.
	ipBindAddressNoPort = 24
)

// flood is a running flood from one source address to one listener. Its
// goroutines end when stop is called or the context it started with
// ends; nothing it opens outlives stop.
type flood struct {
	opened     atomic.Int64 // connections opened
	open       atomic.Int64 // open now, as the flooder sees them
	dialErrs   atomic.Int64 // dials that failed
	handshakes atomic.Int64 // ClientHello flood: server flights received
	refused    atomic.Int64 // ClientHello flood: SSLRequest not answered 'S'
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

// stop ends the flood, closes its sockets and waits for its goroutines.
// A nil flood is no flood.
func (f *flood) stop() {
	if f == nil {
		return
	}
	f.cancel()
	f.wg.Wait()
}

// floodDialer dials from src, closing with RST (no TIME_WAIT) so that a
// long flood does not run out of ephemeral ports.
func floodDialer(src netip.Addr) *net.Dialer {
	return &net.Dialer{
		Timeout:   floodDialTimeout,
		LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			})
			return errors.Join(err, serr)
		},
	}
}

// dial opens one flood connection, or waits floodBackoff and reports
// false.
func (f *flood) dial(ctx context.Context, d *net.Dialer, addr string) (net.Conn, bool) {
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() == nil {
			f.dialErrs.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(floodBackoff):
			}
		}
		return nil, false
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	f.opened.Add(1)
	f.open.Add(1)
	return c, true
}

// closeConn closes a flood connection and counts it closed.
func (f *flood) closeConn(c net.Conn) {
	c.Close()
	f.open.Add(-1)
}

// startIdleFlood holds n connections from src to addr that send nothing;
// each is reopened as soon as the server closes it. The flood lasts until
// stop, or ctx ends.
func startIdleFlood(ctx context.Context, addr string, src netip.Addr, n int) *flood {
	ctx, cancel := context.WithCancel(ctx)
	f := &flood{cancel: cancel}
	d := floodDialer(src)
	for range n {
		f.wg.Go(func() {
			buf := make([]byte, 512)
			for ctx.Err() == nil {
				c, ok := f.dial(ctx, d, addr)
				if !ok {
					continue
				}
				// Reading until the server closes is the wait; stop
				// closes the socket to end it.
				unhook := context.AfterFunc(ctx, func() { c.Close() })
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
				unhook()
				f.closeConn(c)
			}
		})
	}
	return f
}

// sslRequest is PostgreSQL's SSLRequest: length 8, code 80877103.
var sslRequest = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

// startHelloFlood runs loops connections at a time from src to the
// PostgreSQL path at addr, each sending an SSLRequest and then hello (a
// TLS ClientHello), waiting for the server's first flight (which it can
// only send after its key exchange and signature) and closing at once,
// as a client that wants the server to spend CPU would.
func startHelloFlood(ctx context.Context, addr string, src netip.Addr, loops int, hello []byte) *flood {
	ctx, cancel := context.WithCancel(ctx)
	f := &flood{cancel: cancel}
	d := floodDialer(src)
	for range loops {
		f.wg.Go(func() {
			buf := make([]byte, 1)
			for ctx.Err() == nil {
				c, ok := f.dial(ctx, d, addr)
				if !ok {
					continue
				}
				unhook := context.AfterFunc(ctx, func() { c.Close() })
				c.SetDeadline(time.Now().Add(helloReadTimeout))
				if _, err := c.Write(sslRequest); err == nil {
					if _, err := io.ReadFull(c, buf); err == nil && buf[0] != 'S' {
						f.refused.Add(1)
					} else if err == nil {
						if _, err := c.Write(hello); err == nil {
							// 0x16: a TLS handshake record, the ServerHello.
							if _, err := io.ReadFull(c, buf); err == nil && buf[0] == 0x16 {
								f.handshakes.Add(1)
							}
						}
					}
				}
				unhook()
				f.closeConn(c)
			}
		})
	}
	return f
}

// clientHello returns the bytes of a TLS ClientHello as libpq's OpenSSL
// would send one (TLS 1.2 and 1.3, X25519 and P-256, no session ticket),
// made once by crypto/tls and replayed by every flood connection: a
// server does its own key exchange and signature whatever the client
// random.
func clientHello() ([]byte, error) {
	cc := &captureConn{}
	cfg := &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", SessionTicketsDisabled: true,
		MinVersion: tls.VersionTLS12, CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}
	// The handshake fails at the first read; by then the ClientHello is
	// written.
	tls.Client(cc, cfg).Handshake()
	if cc.buf.Len() == 0 || cc.buf.Bytes()[0] != 0x16 {
		return nil, errors.New("making a ClientHello: crypto/tls wrote no handshake record")
	}
	return bytes.Clone(cc.buf.Bytes()), nil
}

// captureConn is a net.Conn that keeps what is written and has nothing
// to read.
type captureConn struct {
	buf bytes.Buffer
}

func (c *captureConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (c *captureConn) Write(b []byte) (int, error)      { return c.buf.Write(b) }
func (c *captureConn) Close() error                     { return nil }
func (c *captureConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *captureConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *captureConn) SetDeadline(time.Time) error      { return nil }
func (c *captureConn) SetReadDeadline(time.Time) error  { return nil }
func (c *captureConn) SetWriteDeadline(time.Time) error { return nil }
