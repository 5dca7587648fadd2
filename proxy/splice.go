package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/spacegate/spacegate/config"
)

// Copy buffers. Each direction reads into its own small buffer, so that an
// idle session, blocked in a read, holds only that: 10k idle connections
// must cost little memory. A read that fills it means bulk data is flowing
// (a COPY, a large result), and the direction switches to a pooled large
// buffer until reads are small again. One TLS record holds at most 16 KiB of
// plaintext and PostgreSQL and Redis write in 8-16 KiB chunks, so a larger
// buffer buys no fewer system calls.
const (
	spliceSmallBufSize = 1 << 10
	spliceBufSize      = 32 << 10
)

// spliceBuf is one direction's copy buffer. It is owned by one goroutine.
type spliceBuf struct {
	small []byte
	big   *[]byte
	pool  *sync.Pool
}

func newSpliceBuf(pool *sync.Pool) *spliceBuf {
	return &spliceBuf{small: make([]byte, spliceSmallBufSize), pool: pool}
}

// next returns the buffer for the next read, given how much the last one
// read (0 before the first).
func (b *spliceBuf) next(last int) []byte {
	switch {
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
func (b *spliceBuf) release() {
	if b.big != nil {
		b.pool.Put(b.big)
		b.big = nil
	}
}

// splice copies bytes both ways until both directions have ended: on an
// event loop (session.go) when handOff can move the sockets there, else
// with a goroutine per direction, as below. When one
// side stops sending (EOF), its peer's write side is closed and the other
// direction goes on, so every byte in flight is delivered (half-close). An
// error in either direction ends both.
func (c *conn) splice() error {
	if err := c.handOff(); err == nil {
		return errHandedOff
	} else if !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
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

// redisHalfCloseIdle bounds how long a Redis session whose client has
// finished sending (half-close, as `redis-cli < commands` does) may wait
// for its upstream without a byte: a client that left and a hung upstream
// must not hold a session forever.
const redisHalfCloseIdle = 60 * time.Second

// clientToUpstream is one direction of splice, named so that goroutine
// dumps say what each goroutine is doing.
func (c *conn) clientToUpstream(errc chan<- error) {
	defer func() {
		if v := recover(); v != nil {
			c.srv.notePanic(c, v)
			c.client.Close()
			c.upstream.Close()
			errc <- errPanicked
		}
	}()
	n, err := c.copyHalf(c.upstream, c.client)
	c.bytesUp = n
	if err != nil {
		c.client.Close()
		c.upstream.Close()
	} else {
		// The client is done sending. A PostgreSQL client never half-closes:
		// its session is over, and the server, which sees EOF, closes at
		// once; give it the connect timeout, not forever. A Redis client may
		// still be reading replies.
		c.clientDone.Store(true)
		idle := redisHalfCloseIdle
		if c.lis.Protocol == config.ProtocolPostgres {
			idle = c.snap.Config.Limits.UpstreamConnectTimeout
		}
		_ = c.upstream.SetReadDeadline(time.Now().Add(idle))
	}
	errc <- err
}

func (c *conn) upstreamToClient() error {
	if c.lis.Protocol == config.ProtocolPostgres {
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
	b := newSpliceBuf(&c.srv.bufs)
	defer b.release()
	var f pgFramer
	buf := b.next(0)
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
		buf = b.next(nr)
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
// and writes through its own spliceBuf rather than io.Copy, whose
// ReaderFrom/WriterTo paths allocate a fresh buffer per call for a TLS source
// and would hold a large buffer in every idle session.
func (c *conn) copyHalf(dst, src net.Conn) (int64, error) {
	b := newSpliceBuf(&c.srv.bufs)
	defer b.release()
	buf := b.next(0)
	var written int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			written += int64(nw)
			if werr != nil {
				return written, werr
			}
			if src == c.upstream && c.clientDone.Load() {
				_ = src.SetReadDeadline(time.Now().Add(redisHalfCloseIdle)) // an idle bound, not a total one
			}
		}
		buf = b.next(nr)
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
