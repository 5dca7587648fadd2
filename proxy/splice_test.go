package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/spacegate/spacegate/internal/testenv"
)

// tcpPeer is a real TCP server for what PostgreSQL and Redis cannot show:
// it counts the connections it accepts and runs serve on each.
type tcpPeer struct {
	ln       net.Listener
	accepted atomic.Int64
	done     chan struct{}
}

func startPeer(t testing.TB, serve func(net.Conn)) *tcpPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpPeer{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepted.Add(1)
			serve(nc)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-p.done })
	return p
}

// TestNothingReachesUpstreamOnRefusal: a refused connection never opens a
// connection to its upstream, whatever the reason.
func TestNothingReachesUpstreamOnRefusal(t *testing.T) {
	// Count the connections that carry bytes: the gate's health probes
	// connect and close without sending any.
	var spoke atomic.Int64
	peer := startPeer(t, func(nc net.Conn) {
		go func() {
			defer nc.Close()
			nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, _ := nc.Read(make([]byte, 1)); n > 0 {
				spoke.Add(1)
			}
		}()
	})
	e := newEnv(t, envOptions{pgUpstream: peer.ln.Addr().String(), redisUpstream: peer.ln.Addr().String()})
	expired := e.pki.Client(t, "expired", testenv.Expired())
	foreign := e.pki.ForeignClient(t, "foreign")

	for _, cs := range []string{
		e.pgConnString(nil),
		e.pgConnString(expired),
		e.pgConnString(foreign),
		e.pgConnString(e.client, "sslmode=disable"),
	} {
		if c, err := pgConnect(t, cs); err == nil {
			c.Close(context.Background())
			t.Fatalf("%s: accepted", cs)
		}
	}
	if _, err := pgConnect(t, e.pgConnString(e.client), withDialFrom("127.0.0.2")); err == nil {
		t.Fatal("accepted from 127.0.0.2")
	}
	rc := e.redisClient(expired, nil)
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rc.Ping(ctx).Err(); err == nil {
		t.Fatal("redis accepted an expired certificate")
	}
	if n := spoke.Load(); n != 0 {
		t.Fatalf("upstream got bytes on %d connections from refused clients", n)
	}
	// The control: a good client does reach it (and fails there, as the
	// peer is no database: it closes without a word, which the gate tells
	// the client of), so the counter can move.
	_, err := pgConnect(t, e.pgConnString(e.client))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Message != upstreamLostMsg("db") {
		t.Fatalf("good client refused by the gate: %v", pgErr)
	}
	waitFor(t, 5*time.Second, "the good client's StartupMessage upstream", func() bool { return spoke.Load() == 1 })
}

// TestSpliceHalfClose: each direction's end of stream reaches the other
// side while the opposite direction goes on, and every byte arrives.
func TestSpliceHalfClose(t *testing.T) { forEachSplice(t, testSpliceHalfClose) }

func testSpliceHalfClose(t *testing.T, goroutines bool) {
	// The upstream reads the whole request until the client's EOF, then
	// answers with the request reversed, then closes.
	peer := startPeer(t, func(nc net.Conn) {
		go func() {
			defer nc.Close()
			req, err := io.ReadAll(nc)
			if err != nil {
				return
			}
			rev := make([]byte, len(req))
			for i, b := range req {
				rev[len(req)-1-i] = b
			}
			nc.Write(rev)
		}()
	})
	e := newEnv(t, envOptions{noPostgres: true, redisUpstream: peer.ln.Addr().String(), goroutineSplice: goroutines})
	for _, size := range []int{0, 1, 16 << 10, 5 << 20} {
		req := make([]byte, size)
		rand.Read(req)
		tc, err := tls.Dial("tcp", e.redisAdr, &tls.Config{RootCAs: e.pki.ServerPool(), ServerName: "localhost", Certificates: []tls.Certificate{e.client.TLS}})
		if err != nil {
			t.Fatal(err)
		}
		tc.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := tc.Write(req); err != nil {
			t.Fatal(err)
		}
		// Half-close: the upstream must see EOF and still be able to answer.
		if err := tc.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(tc)
		tc.Close()
		if err != nil {
			t.Fatalf("size %d: reading the answer: %v", size, err)
		}
		if len(got) != size {
			t.Fatalf("size %d: got %d bytes back", size, len(got))
		}
		for i := range got {
			if got[i] != req[size-1-i] {
				t.Fatalf("size %d: byte %d differs", size, i)
			}
		}
	}
}

// TestDrainTimeoutEndsHalfClosedSession: a session whose client has
// finished sending and whose upstream stays silent still ends at the drain
// timeout; closing the client side alone would leave it waiting upstream.
func TestDrainTimeoutEndsHalfClosedSession(t *testing.T) {
	forEachSplice(t, testDrainTimeoutEndsHalfClosedSession)
}

func testDrainTimeoutEndsHalfClosedSession(t *testing.T, goroutines bool) {
	release := make(chan struct{})
	peer := startPeer(t, func(nc net.Conn) {
		go func() {
			defer nc.Close()
			io.Copy(io.Discard, nc)
			<-release // silent after the client's EOF
		}()
	})
	defer close(release)
	e := newEnv(t, envOptions{noPostgres: true, redisUpstream: peer.ln.Addr().String(), drainTimeout: "300ms", goroutineSplice: goroutines})
	tc, err := tls.Dial("tcp", e.redisAdr, &tls.Config{RootCAs: e.pki.ServerPool(), ServerName: "localhost", Certificates: []tls.Certificate{e.client.TLS}})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.Write([]byte("hello"))
	tc.CloseWrite()
	waitFor(t, 5*time.Second, "the session to splice", func() bool { return e.srv.Status().Routes[0].Active == 1 })
	start := time.Now()
	e.shutdown(10 * time.Second)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("shutdown took %s with a 300ms drain timeout", d)
	}
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := tc.Read(make([]byte, 1)); err == nil {
		t.Fatal("session still open after drain")
	}
}

// TestIdleSessionsHoldNoGoroutine: on the event loops an idle session costs
// no goroutine (and so no stack); the goroutine splice costs two. This is
// what keeps 10k idle connections cheap.
func TestIdleSessionsHoldNoGoroutine(t *testing.T) {
	forEachSplice(t, func(t *testing.T, goroutines bool) {
		e := newEnv(t, envOptions{noPostgres: true, goroutineSplice: goroutines})
		const n = 50
		settle := func() int {
			time.Sleep(100 * time.Millisecond) // let finished goroutines exit
			return runtime.NumGoroutine()
		}
		base := settle()
		cfg := &tls.Config{RootCAs: e.pki.ServerPool(), ServerName: "localhost", Certificates: []tls.Certificate{e.client.TLS}}
		for range n {
			tc, err := tls.Dial("tcp", e.redisAdr, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer tc.Close()
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := tc.Write([]byte("PING\r\n")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 7)
			if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "+PONG\r\n" {
				t.Fatalf("PING through the gate: %q, %v", buf, err)
			}
		}
		waitFor(t, 5*time.Second, "every session to splice", func() bool { return e.srv.Status().Routes[0].Active == n })
		grew := settle() - base
		t.Logf("%d idle sessions: %d more goroutines", n, grew)
		switch {
		case !goroutines && grew > 5:
			t.Errorf("%d idle sessions on the event loops added %d goroutines, want none", n, grew)
		case goroutines && grew < 2*n:
			t.Errorf("%d idle sessions with the goroutine splice added %d goroutines, want %d", n, grew, 2*n)
		}
	})
}

// TestSilentUpstreamAfterClientLeft: once a PostgreSQL client has finished
// sending, an upstream that neither answers nor closes holds the session
// for the connect timeout at most, on either splice.
func TestSilentUpstreamAfterClientLeft(t *testing.T) {
	forEachSplice(t, func(t *testing.T, goroutines bool) {
		release := make(chan struct{})
		peer := startPeer(t, func(nc net.Conn) {
			go func() {
				defer nc.Close()
				io.Copy(io.Discard, nc) // reads to EOF, then says nothing
				<-release
			}()
		})
		defer close(release)
		e := newEnv(t, envOptions{noRedis: true, pgUpstream: peer.ln.Addr().String(), goroutineSplice: goroutines})
		nc, err := net.Dial("tcp", e.pgAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := nc.Write(sslRequestPacket); err != nil {
			t.Fatal(err)
		}
		answer := make([]byte, 1)
		if _, err := io.ReadFull(nc, answer); err != nil || answer[0] != 'S' {
			t.Fatalf("SSLRequest answered %q, %v", answer, err)
		}
		tc := tls.Client(nc, &tls.Config{RootCAs: e.pki.ServerPool(), ServerName: "localhost", Certificates: []tls.Certificate{e.client.TLS}})
		startup := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
			Parameters: map[string]string{"user": "postgres", "database": "postgres"}}
		pkt, err := startup.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tc.Write(pkt); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the session to splice", func() bool { return e.srv.Status().Routes[0].Active == 1 })
		tc.CloseWrite()
		nc.(*net.TCPConn).CloseWrite()
		start := time.Now()
		// upstream_connect_timeout is 2s in newEnv.
		waitFor(t, 6*time.Second, "the session to end", func() bool { return e.srv.conns.len() == 0 })
		t.Logf("session ended %s after the client's EOF", time.Since(start).Round(10*time.Millisecond))
		if _, err := io.ReadAll(tc); err != nil {
			t.Logf("client read after the end: %v", err)
		}
	})
}
