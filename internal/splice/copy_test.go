package splice

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// shapes are the socket shapes every copy test runs over.
func shapes() []struct {
	name string
	sh   shape
} {
	return []struct {
		name string
		sh   shape
	}{
		{"plain", shape{small: true}},
		{"clientTLS", shape{clientTLS: true, small: true}},
		{"upstreamTLS", shape{upstreamTLS: true, small: true}},
		{"bothTLS", shape{clientTLS: true, upstreamTLS: true, small: true}},
		{"unix", shape{pair: unixPair, small: true}},
	}
}

// TestCopyBothWays sends megabytes both ways at once through small kernel
// buffers (short writes, EAGAIN, re-armed edges), half-closes each side
// after its last byte, and checks that every byte arrived in order and
// OnEnd reports both counts, once, with no error.
func TestCopyBothWays(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		for _, c := range shapes() {
			t.Run(c.name, func(t *testing.T) {
				e := startEngine(t, portable, 2)
				ts := newSession(t, e, c.sh, Hooks{})
				const size = 3 << 20
				upData, downData := randBytes(t, size), randBytes(t, size)
				var g errGroup
				var gotUp, gotDown []byte
				g.spawn(func() error { return sendAll(ts.client, upData) })
				g.spawn(func() error { return sendAll(ts.up, downData) })
				g.spawn(func() (err error) { gotUp, err = io.ReadAll(ts.up); return err })
				g.spawn(func() (err error) { gotDown, err = io.ReadAll(ts.client); return err })
				if err := g.wait(); err != nil {
					t.Fatal(err)
				}
				sameBytes(t, "client to upstream", gotUp, upData)
				sameBytes(t, "upstream to client", gotDown, downData)
				st, err := ts.ends.wait(t, 10*time.Second)
				if err != nil {
					t.Errorf("OnEnd: %v, want nil", err)
				}
				if st.Up != size || st.Down != size {
					t.Errorf("OnEnd stats %+v, want %d each way", st, size)
				}
			})
		}
	})
}

// sendAll writes p in chunks of varied sizes, then half-closes c.
func sendAll(c net.Conn, p []byte) error {
	for i, k := 0, 1; len(p) > 0; i++ {
		n := min(len(p), k)
		if _, err := c.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
		k = k*7%70000 + 1
	}
	return halfClose(c)
}

func halfClose(c net.Conn) error {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return fmt.Errorf("%T cannot half-close", c)
	}
	if err := cw.CloseWrite(); err != nil {
		return err
	}
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		return halfClose(nc.NetConn())
	}
	return nil
}

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s: got %d bytes (sha256 %x), want %d (sha256 %x)", what, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

// TestHalfClose: each side may finish sending first, and the other
// direction goes on to its end.
func TestHalfClose(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		for _, c := range shapes() {
			t.Run(c.name, func(t *testing.T) {
				e := startEngine(t, portable, 1)
				for _, clientFirst := range []bool{true, false} {
					ts := newSession(t, e, c.sh, Hooks{})
					first, second := ts.client, ts.up
					if !clientFirst {
						first, second = ts.up, ts.client
					}
					if err := sendAll(first, []byte("ping")); err != nil {
						t.Fatal(err)
					}
					got, err := io.ReadAll(second)
					if err != nil || string(got) != "ping" {
						t.Fatalf("clientFirst=%v: the other side read %q, %v; want ping then EOF", clientFirst, got, err)
					}
					// The other direction still flows, in volume.
					data := randBytes(t, 1<<20)
					var g errGroup
					g.spawn(func() error { return sendAll(second, data) })
					got, err = io.ReadAll(first)
					if err != nil {
						t.Fatal(err)
					}
					if err := g.wait(); err != nil {
						t.Fatal(err)
					}
					sameBytes(t, "after the half-close", got, data)
					if _, err := ts.ends.wait(t, 5*time.Second); err != nil {
						t.Errorf("OnEnd: %v, want nil", err)
					}
				}
			})
		}
	})
}

// TestEOFWithData: a peer that writes and closes at once (its data and FIN
// in one edge) has every byte delivered, then EOF.
func TestEOFWithData(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		for _, c := range shapes() {
			t.Run(c.name, func(t *testing.T) {
				e := startEngine(t, portable, 1)
				for _, size := range []int{1, 1000, 200 << 10} {
					ts := newSession(t, e, c.sh, Hooks{})
					data := randBytes(t, size)
					go func() {
						ts.up.Write(data)
						ts.up.Close()
					}()
					got, err := io.ReadAll(ts.client)
					if err != nil {
						t.Fatalf("size %d: %v", size, err)
					}
					sameBytes(t, fmt.Sprintf("size %d", size), got, data)
					ts.client.Close()
					ts.ends.wait(t, 5*time.Second)
				}
			})
		}
	})
}

// TestSharedBuffer runs many TLS sessions on one loop at once, each echoed
// by its upstream: the loop's output buffer is shared by all, and each
// client must get exactly its own bytes back.
func TestSharedBuffer(t *testing.T) {
	forEachImpl(t, func(t *testing.T, portable bool) {
		e := startEngine(t, portable, 1)
		const n, size = 40, 256 << 10
		var g errGroup
		for i := range n {
			ts := newSession(t, e, shape{clientTLS: true, upstreamTLS: i%2 == 0, small: i%3 == 0}, Hooks{})
			go func() {
				io.Copy(ts.up, ts.up)
				halfClose(ts.up)
			}()
			data := bytes.Repeat([]byte{byte(i)}, size)
			copy(data, fmt.Sprintf("session %d", i))
			g.spawn(func() error { return sendAll(ts.client, data) })
			g.spawn(func() error {
				got, err := io.ReadAll(ts.client)
				if err != nil {
					return err
				}
				if !bytes.Equal(got, data) {
					return fmt.Errorf("session %d got %d bytes, not its own %d", i, len(got), len(data))
				}
				_, err = ts.ends.wait(t, 10*time.Second)
				return err
			})
		}
		if err := g.wait(); err != nil {
			t.Fatal(err)
		}
	})
}
