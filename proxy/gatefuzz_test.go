package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pires/go-proxyproto"
	"go.uber.org/zap/zapcore"

	"github.com/spacegate/spacegate/internal/testenv"
)

// FuzzGate is the process-level fuzzer: one real gate per fuzz worker, in
// front of the package's PostgreSQL and Redis, and every input one TCP
// connection to it. The input picks a preamble (what an honest or a
// confused client sends first: PROXY headers, the PostgreSQL negotiation
// packets, a ClientHello, a whole TLS handshake with or without the good
// client certificate), a route and a source: 127.0.0.1, which the rules
// allow; a stranger (one of many loopback addresses, or 127.0.0.2 for all,
// which soon spends its courtesy refusals and is closed before TLS); or
// 127.0.0.3, a trusted PROXY protocol peer. The fuzzed bytes follow the
// preamble. After every batch of inputs, and at the end of the
// seed corpus, the gate must still answer /healthz, serve a good client on
// each protocol, have let go of every connection, and have logged no error.
//
// The seed corpus (testdata/fuzz/FuzzGate) runs with go test. Fuzz it by
// hand with
//
//	go test -run '^$' -fuzz '^FuzzGate$' -fuzztime 30m -parallel 2 ./proxy
//
// A crash of the process (a panic in any connection) is reported with the
// input that caused it; a failed batch check names the last inputs.
func FuzzGate(f *testing.F) {
	// Every process that runs this starts a gate: each fuzz worker, and
	// also the coordinator, whose gate stays idle.
	g := newGateFuzz(f)
	f.Fuzz(func(t *testing.T, pre, route, src uint8, data []byte) {
		in := g.input(pre, route, src, data)
		g.recent = append(g.recent[max(0, len(g.recent)-gateFuzzBatch+1):], in.String())
		g.send(in)
		if g.runs++; g.runs%gateFuzzBatch == 0 {
			if err := g.check(); err != nil {
				t.Fatalf("after %d inputs: %v\nthe batch's last inputs:\n%s", g.runs, err, strings.Join(g.recent, "\n"))
			}
		}
	})
	// The end of the seed corpus (or of a fuzzing run, harmlessly).
	if err := g.check(); err != nil {
		f.Fatalf("after the %d inputs of the corpus: %v", g.runs, err)
	}
	f.Logf("%d inputs; outcomes: %v", g.runs, g.outcomes)
}

const (
	gateFuzzBatch = 100                    // inputs between checks of the gate's health
	gateFuzzBound = 750 * time.Millisecond // one input's connection, all told
)

// The source addresses of the fuzzer's connections: all this machine.
const (
	fuzzAllowed    = "127.0.0.1"   // in the rules
	fuzzDisallowed = "127.0.0.2"   // in no rule; others: disallowedSource
	fuzzTrusted    = "127.0.0.3"   // a PROXY protocol peer, itself in no rule
	fuzzStranger   = "203.0.113.9" // a client a PROXY header may name, in no rule
)

// gateStep is one part of a preamble, sent by the fuzz client as a real
// client would, waiting for the gate's answer where a client waits.
type gateStep uint8

const (
	stepProxyV1   gateStep = iota // PROXY v1 line
	stepProxyV2                   // PROXY v2 header
	stepGSSENC                    // GSSENCRequest, then read the answer byte
	stepSSL                       // SSLRequest, then read the answer byte
	stepSSLNoWait                 // SSLRequest with what follows in the same breath
	stepCancel                    // a well-formed 16-byte CancelRequest
	stepHello                     // a real ClientHello's bytes; what follows is not TLS
	stepTLS                       // a TLS handshake without client certificate; what follows is inside TLS
	stepTLSCert                   // a TLS handshake with the good client certificate
	stepStartup                   // StartupMessage user=postgres: a session, whose bytes reach the upstream
)

var gateStepNames = [...]string{"proxy1", "proxy2", "gssenc", "ssl", "ssl-nowait", "cancel", "hello", "tls", "tls-cert", "startup"}

func (s gateStep) String() string { return gateStepNames[s] }

// gatePreambles are the preambles an input picks from (pre modulo the
// length): each alone, and the sequences real clients send.
var gatePreambles = [][]gateStep{
	nil,
	{stepSSL},
	{stepSSLNoWait},
	{stepGSSENC},
	{stepCancel},
	{stepProxyV1},
	{stepProxyV2},
	{stepHello},
	{stepTLS},
	{stepTLSCert},
	{stepGSSENC, stepSSL},
	{stepSSL, stepHello},
	{stepSSL, stepTLS},
	{stepSSL, stepTLSCert},
	{stepGSSENC, stepSSL, stepTLSCert},
	{stepSSL, stepTLSCert, stepStartup},
	{stepTLSCert, stepStartup},
	{stepSSL, stepTLSCert, stepCancel},
	{stepProxyV1, stepSSL, stepTLSCert},
	{stepProxyV2, stepTLSCert},
	{stepProxyV2, stepCancel},
	{stepProxyV1, stepGSSENC, stepSSL, stepHello},
	{stepProxyV2, stepProxyV2},
	{stepProxyV2, stepSSL, stepTLSCert, stepStartup},
}

// gateFuzzRoute is where an input connects, and the server name it sends.
type gateFuzzRoute struct {
	name  string // for messages
	addr  string // set by newGateFuzz
	sni   string // "": none
	redis bool
}

// gateFuzz is the gate under fuzz and its clients.
type gateFuzz struct {
	e        *env
	routes   []gateFuzzRoute
	client   *testenv.ClientCert // good for every route
	hellos   map[string][]byte   // captured ClientHellos by SNI and ALPN
	runs     int
	recent   []string
	outcomes map[string]int
}

func newGateFuzz(f *testing.F) *gateFuzz {
	pki := testenv.NewPKI(f)
	shared := testenv.FreeAddr(f)
	alphaCert, alphaKey := serverCert(f, pki, "alpha", "alpha.test")
	betaCert, betaKey := serverCert(f, pki, "beta", "beta.test")
	dbAddr, cacheAddr := testenv.FreeAddr(f), testenv.FreeAddr(f)
	pg, rd := sharedPostgres(f), sharedRedis(f)
	routes := fmt.Sprintf(`  - name: db
    protocol: postgres
    listen: %[1]s
    upstream: %[2]s
    ip_rules_file: rules.yaml
  - name: cache
    protocol: redis
    listen: %[3]s
    upstream: %[4]s
    ip_rules_file: rules.yaml
  - name: alpha
    protocol: postgres
    listen: %[5]s
    server_names: [alpha.test]
    upstream: %[2]s
    ip_rules_file: rules.yaml
    tls: {cert_file: %[6]s, key_file: %[7]s}
  - name: beta
    protocol: postgres
    listen: %[5]s
    server_names: [beta.test]
    upstream: %[2]s
    ip_rules_file: rules.yaml
    tls: {cert_file: %[8]s, key_file: %[9]s}
`, dbAddr, pg.Addr, cacheAddr, rd.Addr, shared, alphaCert, alphaKey, betaCert, betaKey)
	e := newEnv(f, envOptions{pki: pki, routes: routes, handshakeTimeout: "2s",
		top: "proxy_protocol:\n  trusted_cidrs: [" + fuzzTrusted + "/32]\n"})
	e.pgAddr, e.redisAdr = dbAddr, cacheAddr
	g := &gateFuzz{
		e:      e,
		client: pki.Client(f, "fuzz", testenv.ForRoutes("db", "cache", "alpha", "beta")),
		routes: []gateFuzzRoute{
			{name: "db", addr: dbAddr, sni: "localhost"},
			{name: "cache", addr: cacheAddr, sni: "localhost", redis: true},
			{name: "alpha", addr: shared, sni: "alpha.test"},
			{name: "beta", addr: shared, sni: "beta.test"},
			{name: "shared/unknown-sni", addr: shared, sni: "nobody.test"},
			{name: "shared/no-sni", addr: shared},
		},
		hellos:   map[string][]byte{},
		outcomes: map[string]int{},
	}
	for _, r := range g.routes {
		for _, alpn := range []string{"", alpnPostgres} {
			g.hellos[r.sni+"/"+alpn] = clientHelloFor(f, r.sni, alpn)
		}
	}
	return g
}

// clientHelloFor captures a ClientHello for server name sni ("": none) and
// protocol alpn ("": none), like clientHello.
func clientHelloFor(t testing.TB, sni, alpn string) []byte {
	t.Helper()
	cfg := &tls.Config{ServerName: sni, InsecureSkipVerify: true}
	if alpn != "" {
		cfg.NextProtos = []string{alpn}
	}
	c1, c2 := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tls.Client(c1, cfg).Handshake()
	}()
	defer func() { c1.Close(); c2.Close(); <-done }()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [5]byte
	if _, err := io.ReadFull(c2, hdr[:]); err != nil {
		t.Fatalf("capturing a ClientHello: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[3:5]))
	if _, err := io.ReadFull(c2, body); err != nil {
		t.Fatalf("capturing a ClientHello: %v", err)
	}
	return append(hdr[:], body...)
}

// gateInput is one fuzz input, decoded.
type gateInput struct {
	steps  []gateStep
	route  gateFuzzRoute
	noALPN bool   // TLS steps on a PostgreSQL route offer no ALPN
	peer   string // the TCP source
	proxy  string // the source a PROXY header names
	data   []byte
}

func (g *gateFuzz) input(pre, route, src uint8, data []byte) gateInput {
	in := gateInput{
		steps:  gatePreambles[int(pre)%len(gatePreambles)],
		route:  g.routes[int(route&0x7f)%len(g.routes)],
		noALPN: route&0x80 != 0,
		peer:   []string{fuzzAllowed, disallowedSource(g.runs), fuzzTrusted}[int(src)%3],
		proxy:  fuzzAllowed,
		data:   data,
	}
	if (src/3)%2 == 1 {
		in.proxy = fuzzStranger
	}
	if in.peer != fuzzAllowed && in.peer != fuzzTrusted && (src/6)%2 == 1 {
		// One stranger address for all: past its courtesy refusals it is
		// closed before TLS.
		in.peer = fuzzDisallowed
	}
	return in
}

func (in gateInput) String() string {
	steps := make([]string, len(in.steps))
	for i, s := range in.steps {
		steps[i] = s.String()
	}
	d := in.data
	if len(d) > 64 {
		d = d[:64]
	}
	return fmt.Sprintf("preamble [%s] route %s (no ALPN %v) from %s (PROXY names %s), %d bytes: %q",
		strings.Join(steps, " "), in.route.name, in.noALPN, in.peer, in.proxy, len(in.data), d)
}

// send runs one input's connection to its end or its bound. What the gate
// answers is not judged here: the batch check judges the gate.
func (g *gateFuzz) send(in gateInput) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(in.peer)}, Timeout: gateFuzzBound}
	nc, err := d.Dial("tcp", in.route.addr)
	if err != nil {
		g.outcomes["dial failed"]++
		return
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(gateFuzzBound))
	var w io.ReadWriter = nc
	var tc *tls.Conn
	for _, s := range in.steps {
		if w, err = g.step(s, in, nc, w); err != nil {
			g.outcomes[s.String()+" failed"]++
			return
		}
		if c, ok := w.(*tls.Conn); ok {
			tc = c
		}
	}
	if _, err := w.Write(in.data); err != nil {
		g.outcomes["write failed"]++
		return
	}
	// Half-close, so that the gate reads the end of the input and needs
	// no timeout to finish; then read whatever it answers.
	if tc != nil {
		_ = tc.CloseWrite()
	}
	_ = nc.(*net.TCPConn).CloseWrite()
	_, err = io.Copy(io.Discard, io.LimitReader(w, 1<<20))
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		g.outcomes["bound reached"]++
	default:
		g.outcomes["closed by the gate"]++
	}
}

// step sends one preamble step on nc, where w is what the client speaks
// through (nc, or TLS over it), and returns what it speaks through next.
func (g *gateFuzz) step(s gateStep, in gateInput, nc net.Conn, w io.ReadWriter) (io.ReadWriter, error) {
	alpn := alpnPostgres
	if in.route.redis || in.noALPN {
		alpn = ""
	}
	switch s {
	case stepProxyV1, stepProxyV2:
		h := proxyproto.HeaderProxyFromAddrs(byte(s-stepProxyV1+1),
			&net.TCPAddr{IP: net.ParseIP(in.proxy), Port: 40000}, nc.LocalAddr())
		_, err := h.WriteTo(w)
		return w, err
	case stepGSSENC, stepSSL:
		code := uint32(codeSSLRequest)
		if s == stepGSSENC {
			code = codeGSSENCRequest
		}
		if _, err := w.Write(startupPacket(code, nil)); err != nil {
			return w, err
		}
		if in.route.redis {
			return w, nil // no answer comes: a Redis route takes it for a command
		}
		var b [1]byte
		_, err := io.ReadFull(w, b[:])
		return w, err
	case stepSSLNoWait:
		_, err := w.Write(startupPacket(codeSSLRequest, nil))
		return w, err
	case stepCancel:
		_, err := w.Write(startupPacket(codeCancelRequest, []byte{0, 0, 0x30, 0x39, 1, 2, 3, 4}))
		return w, err
	case stepHello:
		_, err := w.Write(g.hellos[in.route.sni+"/"+alpn])
		return w, err
	case stepTLS, stepTLSCert:
		// Who answers does not matter here: the gate's side is fuzzed.
		cfg := &tls.Config{ServerName: in.route.sni, InsecureSkipVerify: true}
		if alpn != "" {
			cfg.NextProtos = []string{alpn}
		}
		if s == stepTLSCert {
			cfg.Certificates = []tls.Certificate{g.client.TLS}
		}
		rw, ok := w.(net.Conn)
		if !ok {
			return w, errors.New("TLS inside TLS")
		}
		tc := tls.Client(rw, cfg)
		return tc, tc.Handshake()
	case stepStartup:
		_, err := w.Write(startupPacket(protocolMajor3<<16, []byte("user\x00postgres\x00database\x00postgres\x00\x00")))
		return w, err
	}
	return w, fmt.Errorf("unknown step %d", s)
}

// check is the batch check: the gate still serves, and holds nothing of
// the inputs it has seen.
func (g *gateFuzz) check() error {
	e := g.e
	select {
	case err := <-e.done:
		e.done <- err // for shutdown
		return fmt.Errorf("the gate stopped: Run returned %v", err)
	default:
	}
	// Every input's connection is closed on the client's side: the gate
	// must let go of each, within its handshake timeout.
	deadline := time.Now().Add(5 * time.Second)
	for e.srv.conns.len() != 0 || e.srv.pending.Load() != 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("the gate still holds %d connections (%d pending) 5s after the inputs closed theirs",
				e.srv.conns.len(), e.srv.pending.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The observed log keeps every line: take them, so that a long run
	// does not grow, and look for errors among them.
	for _, l := range e.logs.TakeAll() {
		if l.Level >= zapcore.ErrorLevel {
			return fmt.Errorf("the gate logged an error: %s %v", l.Message, l.ContextMap())
		}
	}
	if err := g.health(); err != nil {
		return err
	}
	if err := g.goodPostgres(e.pgAddr, "localhost"); err != nil {
		return fmt.Errorf("good client of route db: %w", err)
	}
	if err := g.goodPostgres(g.routes[2].addr, "alpha.test"); err != nil {
		return fmt.Errorf("good client of route alpha: %w", err)
	}
	if err := g.goodRedis(); err != nil {
		return fmt.Errorf("good client of route cache: %w", err)
	}
	return nil
}

// health checks the admin endpoint as a probe and a dashboard see it:
// /healthz answers, and /metrics counts no panic (a panic recovered in a
// connection's code closes only that connection, but is a bug).
func (g *gateFuzz) health() error {
	if _, err := g.adminGet("/healthz"); err != nil {
		return err
	}
	m, err := g.adminGet("/metrics")
	if err != nil {
		return err
	}
	const panics = "\nspacegate_panics_total "
	i := strings.Index(m, panics)
	if i < 0 {
		return errors.New("/metrics lacks spacegate_panics_total")
	}
	if n, _, _ := strings.Cut(m[i+len(panics):], "\n"); n != "0" {
		return fmt.Errorf("spacegate_panics_total %s: the log has the stack", n)
	}
	return nil
}

func (g *gateFuzz) adminGet(path string) (string, error) {
	// No keep-alive: an idle pooled connection would trip goleak.
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(g.e.admin + path)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), nil
}

func (g *gateFuzz) goodPostgres(addr, host string) error {
	cfg, err := pgx.ParseConfig(pgURL(g.e.pki, g.client, host, addr, "verify-full"))
	if err != nil {
		return err
	}
	withLookup(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		return fmt.Errorf("SELECT 1: %d, %v", one, err)
	}
	return nil
}

func (g *gateFuzz) goodRedis() error {
	rc := g.e.redisClient(g.client, nil)
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got, err := rc.Ping(ctx).Result(); err != nil || got != "PONG" {
		return fmt.Errorf("PING: %q, %v", got, err)
	}
	return nil
}
