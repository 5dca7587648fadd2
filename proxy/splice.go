package proxy

import (
	"errors"
	"io"
	"net"
	"time"
)

// spliceBufSize is the copy buffer of each direction: one TLS record holds
// at most 16 KiB of plaintext, and PostgreSQL and Redis write in 8-16 KiB
// chunks, so a larger buffer buys no fewer system calls.
const spliceBufSize = 32 << 10

// splice copies bytes both ways until both directions have ended. When one
// side stops sending (EOF), its peer's write side is closed and the other
// direction goes on, so every byte in flight is delivered (half-close). An
// error in either direction ends both.
func (c *conn) splice() error {
	errc := make(chan error, 1)
	go c.clientToUpstream(errc)
	errDown := c.upstreamToClient()
	if errDown != nil {
		// Unblock the other direction: its read or write would wait forever.
		c.client.Close()
		c.upstream.Close()
	}
	errUp := <-errc
	if errDown != nil {
		return errDown
	}
	return errUp
}

// clientToUpstream is one direction of splice, named so that goroutine
// dumps say what each goroutine is doing.
func (c *conn) clientToUpstream(errc chan<- error) {
	n, err := c.copyHalf(c.upstream, c.client)
	c.bytesUp = n
	if err != nil {
		c.client.Close()
		c.upstream.Close()
	}
	errc <- err
}

func (c *conn) upstreamToClient() error {
	if c.lis.Protocol == ProtocolPostgres {
		return c.copyPostgresToClient()
	}
	n, err := c.copyHalf(c.client, c.upstream)
	c.bytesDown = n
	return err
}

// copyPostgresToClient is upstreamToClient for PostgreSQL: it follows the
// server's message framing so that a cut can put its FATAL between two
// messages, never inside one.
func (c *conn) copyPostgresToClient() error {
	bufp := c.srv.bufs.Get().(*[]byte)
	defer c.srv.bufs.Put(bufp)
	buf := *bufp
	var f pgFramer
	for {
		nr, rerr := c.upstream.Read(buf)
		data := buf[:nr]
		if c.cutting.Load() {
			if n, ok := f.untilBoundary(data); ok {
				nw, _ := c.client.Write(data[:n])
				c.bytesDown += int64(nw)
				c.sendCutNotice()
				return errCut
			}
		}
		if nr > 0 {
			f.advance(data)
			nw, werr := c.client.Write(data)
			c.bytesDown += int64(nw)
			if werr != nil {
				return werr
			}
		}
		if rerr != nil {
			var ne net.Error
			if errors.As(rerr, &ne) && ne.Timeout() && c.cutting.Load() {
				// Woken by a cut in the middle of a message: read on to its end.
				_ = c.upstream.SetReadDeadline(time.Time{})
				continue
			}
			if errors.Is(rerr, io.EOF) {
				closeWrite(c.client)
				return nil
			}
			return rerr
		}
	}
}

// copyHalf copies src to dst until src ends, then half-closes dst. It reads
// and writes through its own pooled buffer rather than io.Copy, whose
// ReaderFrom/WriterTo paths allocate a fresh buffer per call for a TLS source.
func (c *conn) copyHalf(dst, src net.Conn) (int64, error) {
	bufp := c.srv.bufs.Get().(*[]byte)
	defer c.srv.bufs.Put(bufp)
	buf := *bufp
	var written int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			written += int64(nw)
			if werr != nil {
				return written, werr
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				closeWrite(dst)
				return written, nil
			}
			return written, rerr
		}
	}
}

// closeWrite half-closes a connection: TLS close_notify, then TCP FIN.
func closeWrite(nc net.Conn) {
	if cw, ok := nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	if tc, ok := nc.(interface{ NetConn() net.Conn }); ok {
		closeWrite(tc.NetConn())
	}
}
