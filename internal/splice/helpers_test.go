package splice

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Open the runtime's own poller now, so that descriptor counts do not
	// see it appear in the first test.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	goleak.VerifyTestMain(m)
}

// impls are the two implementations of the contract. On systems without
// epoll both run on goroutines.
var impls = []struct {
	name     string
	portable bool
}{{"loop", false}, {"portable", true}}

// forEachImpl runs f as a subtest against each implementation.
func forEachImpl(t *testing.T, f func(t *testing.T, portable bool)) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) { f(t, im.portable) })
	}
}

// startEngine starts an engine that a panic fails the test in, and stops
// it at the end of the test.
func startEngine(t *testing.T, portable bool, loops int) *Engine {
	t.Helper()
	checkFds(t)
	e, err := Start(Options{Loops: loops, Portable: portable,
		OnPanic: func(v any, stack []byte) { t.Errorf("panic in a session: %v\n%s", v, stack) },
		OnError: func(err error) { t.Errorf("event loop failed: %v", err) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	return e
}

// waitFor waits up to d for cond.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkFds fails the test if it ends with more open descriptors than it
// began with (Linux), once every close has had its time.
func checkFds(t *testing.T) {
	t.Helper()
	before := countFds()
	if before < 0 {
		return
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := countFds()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("descriptors: %d at the start, %d at the end: %v", before, n, fdLinks())
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func fdLinks() []string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+"="+l)
	}
	return out
}

// countFds counts the process's sockets, epoll sets and eventfds, what the
// engine opens. (The runtime and the test framework open pipes of their
// own as they go.)
func countFds() int {
	if runtime.GOOS != "linux" {
		return -1
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	n := 0
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if strings.HasPrefix(l, "socket:") || strings.HasPrefix(l, "anon_inode:") {
			n++
		}
	}
	return n
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		a.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

// smallBuffers makes a socket's send buffer small, so that writes come
// back short and the loop waits for EPOLLOUT often. (A receive buffer far
// below loopback's 64 KiB MSS would only test TCP's zero-window probes,
// whose backoff stalls a transfer for seconds.)
func smallBuffers(c net.Conn) {
	if b, ok := c.(interface{ SetWriteBuffer(int) error }); ok {
		_ = b.SetWriteBuffer(4096)
	}
}

// testCerts is a self-signed certificate for 127.0.0.1, made per test run.
type testCerts struct {
	server *tls.Config
	client *tls.Config
}

var certsOnce = sync.OnceValues(func() (*testCerts, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "splice test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &testCerts{
		server: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}}},
		client: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"},
	}, nil
})

func certs(t *testing.T) *testCerts {
	t.Helper()
	c, err := certsOnce()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// shape is how a test session's sockets are made.
type shape struct {
	clientTLS, upstreamTLS bool
	small                  bool // small kernel buffers on the gate's sockets
	pair                   func(t *testing.T) (net.Conn, net.Conn)
}

// ends records a session's OnEnd calls.
type ends struct {
	n     atomic.Int32
	mu    sync.Mutex
	stats Stats
	err   error
	done  chan struct{}
}

func newEnds() *ends { return &ends{done: make(chan struct{})} }

func (x *ends) onEnd(st Stats, err error) {
	if x.n.Add(1) != 1 {
		panic("OnEnd called twice")
	}
	x.mu.Lock()
	x.stats, x.err = st, err
	x.mu.Unlock()
	close(x.done)
}

// wait waits for OnEnd and returns what it said.
func (x *ends) wait(t *testing.T, d time.Duration) (Stats, error) {
	t.Helper()
	select {
	case <-x.done:
	case <-time.After(d):
		t.Fatalf("OnEnd not called within %v", d)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.stats, x.err
}

// testSession is a session and the two peers the gate sits between.
type testSession struct {
	s      *Session
	client net.Conn // the client's end
	up     net.Conn // the upstream's end
	ends   *ends
}

// newSession builds sockets of the given shape, runs the TLS handshakes
// as a gate would before the session, and adds the session.
func newSession(t *testing.T, e *Engine, sh shape, h Hooks) *testSession {
	t.Helper()
	pair := sh.pair
	if pair == nil {
		pair = tcpPair
	}
	clientApp, gateClient := pair(t)
	gateUp, upApp := pair(t)
	if sh.small {
		smallBuffers(gateClient)
		smallBuffers(gateUp)
	}
	cs := Side{Conn: Wrap(gateClient)}
	us := Side{Conn: Wrap(gateUp)}
	var g errGroup
	if sh.clientTLS {
		cs.TLS = tls.Server(cs.Conn, certs(t).server)
		tc := tls.Client(clientApp, certs(t).client)
		clientApp = tc
		g.spawn(tc.Handshake)
		g.spawn(cs.TLS.Handshake)
	}
	if sh.upstreamTLS {
		us.TLS = tls.Client(us.Conn, certs(t).client)
		ts := tls.Server(upApp, certs(t).server)
		upApp = ts
		g.spawn(ts.Handshake)
		g.spawn(us.TLS.Handshake)
	}
	if err := g.wait(); err != nil {
		t.Fatal(err)
	}
	x := newEnds()
	h.OnEnd = x.onEnd
	s, err := e.Add(cs, us, h)
	if err != nil {
		t.Fatal(err)
	}
	return &testSession{s: s, client: clientApp, up: upApp, ends: x}
}

// errGroup runs functions and returns the first error.
type errGroup struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func (g *errGroup) spawn(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.mu.Lock()
			g.errs = append(g.errs, err)
			g.mu.Unlock()
		}
	}()
}

func (g *errGroup) wait() error {
	g.wg.Wait()
	return errors.Join(g.errs...)
}

// closeWriteConn half-closes a test peer.
func closeWriteConn(t *testing.T, c net.Conn) {
	t.Helper()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T cannot half-close", c)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if tc, ok := c.(*tls.Conn); ok {
		closeWriteConn(t, tc.NetConn()) // tls.Conn sends close_notify only
	}
}

func tlsServer(c net.Conn) *tls.Conn {
	cfg, _ := certsOnce()
	return tls.Server(c, cfg.server)
}

func tlsClient(c net.Conn) *tls.Conn {
	cfg, _ := certsOnce()
	return tls.Client(c, cfg.client)
}
