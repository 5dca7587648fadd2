package splice

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// toyFramer frames a stream of messages: a type byte and a 4-byte length
// of the body that follows.
type toyFramer struct {
	hdr       [5]byte
	hdrN      int
	remaining int
}

var _ Framer = (*toyFramer)(nil)

func (f *toyFramer) Advance(p []byte) {
	for len(p) > 0 {
		if f.remaining > 0 {
			n := min(f.remaining, len(p))
			f.remaining -= n
			p = p[n:]
			continue
		}
		n := copy(f.hdr[f.hdrN:], p)
		f.hdrN += n
		p = p[n:]
		if f.hdrN == len(f.hdr) {
			f.hdrN = 0
			f.remaining = int(binary.BigEndian.Uint32(f.hdr[1:]))
		}
	}
}

func (f *toyFramer) Boundary(p []byte) (int, bool) {
	if f.hdrN == 0 && f.remaining == 0 {
		return 0, true
	}
	g := *f
	for i := 0; i < len(p); {
		if g.remaining > 0 {
			n := min(g.remaining, len(p)-i)
			g.remaining -= n
			i += n
		} else {
			g.hdr[g.hdrN] = p[i]
			g.hdrN++
			i++
			if g.hdrN == len(g.hdr) {
				g.hdrN = 0
				g.remaining = int(binary.BigEndian.Uint32(g.hdr[1:]))
			}
		}
		if g.hdrN == 0 && g.remaining == 0 {
			return i, true
		}
	}
	return 0, false
}

// toyMsg is one message of the toy protocol.
func toyMsg(typ byte, body []byte) []byte {
	b := make([]byte, 5, 5+len(body))
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:], uint32(len(body)))
	return append(b, body...)
}

var cutNotice = toyMsg('E', []byte("FATAL: terminating connection: cut by the test"))

// floodMessages writes data messages to w, each body filled with its
// sequence number, until a write fails.
func floodMessages(w io.Writer, maxBody int) {
	bw := bufio.NewWriterSize(w, 64<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; ; i++ {
		body := bytes.Repeat([]byte{byte(i)}, 1+rng.IntN(maxBody))
		if _, err := bw.Write(toyMsg('D', body)); err != nil {
			return
		}
	}
}

// readUntilNotice reads whole data messages from r, calls atBytes once
// cutAfter bytes have arrived, and returns nil only if the stream ends in
// exactly the notice, then EOF.
func readUntilNotice(r io.Reader, cutAfter int, atBytes func()) error {
	var hdr [5]byte
	total := 0
	for i := 0; ; i++ {
		if total >= cutAfter && atBytes != nil {
			atBytes()
			atBytes = nil
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return fmt.Errorf("message %d header, after %d bytes: %w", i, total, err)
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(r, body); err != nil {
			return fmt.Errorf("message %d body of %d bytes: %w", i, len(body), err)
		}
		total += 5 + len(body)
		switch hdr[0] {
		case 'D':
			if len(body) == 0 || bytes.Count(body, []byte{byte(i)}) != len(body) {
				return fmt.Errorf("message %d is corrupt", i)
			}
		case 'E':
			if got := toyMsg('E', body); !bytes.Equal(got, cutNotice) {
				return fmt.Errorf("notice %q, want %q", got, cutNotice)
			}
			n, err := r.Read(make([]byte, 1))
			if n != 0 || !errors.Is(err, io.EOF) {
				return fmt.Errorf("after the notice: %d bytes, %v; want EOF", n, err)
			}
			return nil
		default:
			return fmt.Errorf("message %d has type %q", i, hdr[0])
		}
	}
}

// TestCutAtBoundaryUnderLoad cuts sessions that carry a COPY both ways: the
// upstream floods the client with messages while the client floods the
// upstream. The client must receive whole messages, then exactly the
// notice, then EOF: never a reset, though it is still sending.
func TestCutAtBoundaryUnderLoad(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		for _, c := range []struct {
			name string
			sh   shape
		}{
			{"plain", shape{}},
			{"clientTLS", shape{clientTLS: true}},
			{"bothTLS-small", shape{clientTLS: true, upstreamTLS: true, small: true}},
		} {
			t.Run(c.name, func(t *testing.T) {
				e := startEngine(t, portable, 1)
				for run := range 5 {
					ts := newSession(t, e, c.sh, Hooks{Framer: &toyFramer{}})
					go floodMessages(ts.up, 40000)
					go io.Copy(io.Discard, ts.up)
					go floodMessages(ts.client, 3000)
					err := readUntilNotice(ts.client, 256<<10*(run+1), func() { ts.s.Cut(cutNotice) })
					if err != nil {
						_, eerr := ts.ends.wait(t, 5*time.Second)
						t.Fatalf("run %d: %v (OnEnd: %v)", run, err, eerr)
					}
					closeRaw(ts.client) // the client leaves once told: the linger ends
					if _, err := ts.ends.wait(t, 5*time.Second); !errors.Is(err, ErrCut) || errors.Is(err, ErrAborted) {
						t.Fatalf("run %d: OnEnd: %v, want ErrCut", run, err)
					}
					ts.up.Close()
				}
			})
		}
	})
}

// TestCutIdle: a session between two messages is cut at once, and the
// client gets the notice even while it still sends.
func TestCutIdle(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		e := startEngine(t, portable, 1)
		for _, sh := range []shape{{}, {clientTLS: true}} {
			ts := newSession(t, e, sh, Hooks{Framer: &toyFramer{}})
			if _, err := ts.up.Write(toyMsg('D', []byte{0})); err != nil {
				t.Fatal(err)
			}
			ts.s.Cut(cutNotice)
			ts.s.Cut([]byte("a second cut is ignored"))
			go floodMessages(ts.client, 100)
			if err := readUntilNotice(ts.client, 0, nil); err != nil {
				t.Fatal(err)
			}
			closeRaw(ts.client)
			if _, err := ts.ends.wait(t, 5*time.Second); !errors.Is(err, ErrCut) {
				t.Fatalf("OnEnd: %v, want ErrCut", err)
			}
		}
	})
}

// TestCutGrace: a cut in the middle of a message that never ends aborts
// the session once the grace has passed; the client gets no notice.
func TestCutGrace(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		e := startEngine(t, portable, 1)
		ts := newSession(t, e, shape{}, Hooks{Framer: &toyFramer{}, CutGrace: 200 * time.Millisecond})
		half := toyMsg('D', make([]byte, 1000))[:500]
		if _, err := ts.up.Write(half); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(half))
		if _, err := io.ReadFull(ts.client, got); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		ts.s.Cut(cutNotice)
		_, err := ts.ends.wait(t, 5*time.Second)
		if !errors.Is(err, ErrCut) || !errors.Is(err, ErrAborted) {
			t.Fatalf("OnEnd: %v, want ErrCut and ErrAborted", err)
		}
		if d := time.Since(start); d < 150*time.Millisecond {
			t.Errorf("aborted after %v, before the grace of 200ms", d)
		}
		rest, _ := io.ReadAll(ts.client)
		if bytes.Contains(rest, cutNotice) {
			t.Errorf("the client got the notice in the middle of a message")
		}
	})
}

// TestCutAfterUpstreamEnded: when the upstream has finished sending, a cut
// ends the session gracefully without a notice (its FIN has gone).
func TestCutAfterUpstreamEnded(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		e := startEngine(t, portable, 1)
		ts := newSession(t, e, shape{}, Hooks{Framer: &toyFramer{}})
		if err := sendAll(ts.up, toyMsg('D', []byte{0})); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(ts.client)
		if err != nil || !bytes.Equal(got, toyMsg('D', []byte{0})) {
			t.Fatalf("read %q, %v", got, err)
		}
		ts.s.Cut(cutNotice)
		ts.client.Close()
		if _, err := ts.ends.wait(t, 5*time.Second); !errors.Is(err, ErrCut) {
			t.Fatalf("OnEnd: %v, want ErrCut", err)
		}
	})
}

// closeRaw closes a test peer's socket, without the close_notify of a
// tls.Conn, which would wait behind a write blocked by a gate that holds a
// flood unread.
func closeRaw(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	c.Close()
}

// TestAbort: Abort ends a session at once, from any goroutine, any number
// of times, even right after Add; OnEnd is called once.
func TestAbort(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		e := startEngine(t, portable, 2)
		for i := range 20 {
			ts := newSession(t, e, shape{clientTLS: i%2 == 0}, Hooks{Framer: &toyFramer{}})
			if i%3 == 0 {
				go floodMessages(ts.up, 5000)
				go io.Copy(io.Discard, ts.client)
			}
			done := make(chan struct{})
			for range 4 {
				go func() {
					<-done
					ts.s.Abort()
					ts.s.Cut(cutNotice)
					ts.s.Abort()
				}()
			}
			close(done)
			_, err := ts.ends.wait(t, 5*time.Second)
			if !errors.Is(err, ErrAborted) && !errors.Is(err, ErrCut) {
				t.Fatalf("OnEnd: %v, want ErrAborted (or ErrCut, if the cut came first)", err)
			}
			// Both peers see the end.
			ts.up.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, ts.up); isTimeout(err) {
				t.Fatal("the upstream did not see the session end")
			}
			ts.client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, ts.client); isTimeout(err) {
				t.Fatal("the client did not see the session end")
			}
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestSilence bounds the upstream's silence once the client has finished:
// in total, or since the last byte.
func TestSilence(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		e := startEngine(t, portable, 1)
		t.Run("total", func(t *testing.T) {
			ts := newSession(t, e, shape{}, Hooks{Silence: 200 * time.Millisecond})
			closeWriteConn(t, ts.client)
			start := time.Now()
			_, err := ts.ends.wait(t, 5*time.Second)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("OnEnd: %v, want os.ErrDeadlineExceeded", err)
			}
			if d := time.Since(start); d < 150*time.Millisecond {
				t.Errorf("ended after %v, before the bound", d)
			}
			if _, err := io.ReadAll(ts.client); err != nil {
				t.Errorf("client: %v, want EOF", err)
			}
		})
		t.Run("idle", func(t *testing.T) {
			ts := newSession(t, e, shape{}, Hooks{Silence: 300 * time.Millisecond, SilenceIdle: true})
			closeWriteConn(t, ts.client)
			start := time.Now()
			// Bytes a third of the bound apart keep it open, well past it.
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for range 8 {
				<-tick.C
				if _, err := ts.up.Write([]byte("x")); err != nil {
					t.Fatalf("after %v: %v", time.Since(start), err)
				}
			}
			select {
			case <-ts.ends.done:
				t.Fatalf("ended after %v while the upstream was still sending", time.Since(start))
			default:
			}
			if _, err := ts.ends.wait(t, 5*time.Second); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("OnEnd: %v, want os.ErrDeadlineExceeded", err)
			}
			got, _ := io.ReadAll(ts.client)
			if string(got) != "xxxxxxxx" {
				t.Errorf("client read %q", got)
			}
		})
	})
}

// TestCloseRefusal: Engine.Close tells a client that is still sending its
// notice, then EOF, and calls done once.
func TestCloseRefusal(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		e := startEngine(t, portable, 1)
		for _, tlsOn := range []bool{false, true} {
			clientApp, gate := tcpPair(t)
			side := Side{Conn: Wrap(gate)}
			if tlsOn {
				side.TLS = tlsServer(side.Conn)
				tc := tlsClient(clientApp)
				var g errGroup
				g.spawn(tc.Handshake)
				g.spawn(side.TLS.Handshake)
				if err := g.wait(); err != nil {
					t.Fatal(err)
				}
				clientApp = tc
			}
			go floodMessages(clientApp, 2000)
			var calls atomic.Int32
			done := make(chan struct{})
			if err := e.Close(side, cutNotice, func() {
				if calls.Add(1) == 1 {
					close(done)
				}
			}); err != nil {
				t.Fatal(err)
			}
			if err := readUntilNotice(clientApp, 0, nil); err != nil {
				t.Fatalf("tls=%v: %v", tlsOn, err)
			}
			closeRaw(clientApp)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("done not called")
			}
			if n := calls.Load(); n != 1 {
				t.Fatalf("done called %d times", n)
			}
			clientApp.Close()
		}
	})
}
