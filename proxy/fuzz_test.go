package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/testenv"
)

// The seed corpora are in testdata/fuzz/FuzzXxx and run with go test. Run a
// target for longer with
//
//	go test -run '^$' -fuzz FuzzReadStartupPacket -fuzztime 2m ./proxy/

// countingReader is a reader over data that records how much of it was
// consumed, so a fuzz target can tell a parser that read past its message.
// A Read returns at most chunk bytes (0: no limit), as a socket may.
type countingReader struct {
	data  []byte
	n     int
	chunk int
}

func (r *countingReader) Read(p []byte) (int, error) {
	if r.n == len(r.data) {
		return 0, io.EOF
	}
	if r.chunk > 0 && len(p) > r.chunk {
		p = p[:r.chunk]
	}
	k := copy(p, r.data[r.n:])
	r.n += k
	return k, nil
}

// checkReadError fails t unless err is a protocol violation or the end of
// the input: nothing else may come out of a reader of client bytes.
func checkReadError(t *testing.T, err error) {
	t.Helper()
	var ref *Refusal
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, errNotProxyHeader):
	case errors.As(err, &ref) && ref.Reason == ReasonProtocolViolation:
	default:
		t.Fatalf("error %v (%T), want a protocol violation or EOF", err, err)
	}
}

func FuzzReadStartupPacket(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, preRead bool, chunk uint8) {
		var first []byte
		in := data
		if preRead && len(in) > 0 {
			first, in = in[:1], in[1:]
		}
		r := &countingReader{data: in, chunk: int(chunk)}
		pkt, code, err := readStartupPacket(r, first)
		consumed := len(first) + r.n

		// The header may always be read; the body only when the length
		// in it is one PostgreSQL accepts, and never past it.
		limit := 8
		if len(data) >= 4 {
			if n := binary.BigEndian.Uint32(data); n >= 8 && n <= maxStartupPacket {
				limit = int(n)
			}
		}
		if consumed > limit {
			t.Fatalf("consumed %d bytes, more than the %d of the packet", consumed, limit)
		}
		if len(pkt) > maxStartupPacket || cap(pkt) > maxStartupPacket {
			t.Fatalf("packet of len %d cap %d, over the %d-byte limit", len(pkt), cap(pkt), maxStartupPacket)
		}
		if err != nil {
			checkReadError(t, err)
			if pkt != nil {
				t.Fatalf("packet %d bytes returned with error %v", len(pkt), err)
			}
			return
		}
		n := binary.BigEndian.Uint32(data)
		switch {
		case len(pkt) != int(n) || consumed != len(pkt):
			t.Fatalf("packet %d bytes, consumed %d, length field %d", len(pkt), consumed, n)
		case !bytes.Equal(pkt, data[:n]):
			t.Fatalf("packet %x is not the input's first %d bytes", pkt, n)
		case code != binary.BigEndian.Uint32(data[4:8]):
			t.Fatalf("code %d, want %d", code, binary.BigEndian.Uint32(data[4:8]))
		}
	})
}

func FuzzReadProxyHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		if len(data) == 0 {
			return
		}
		r := &countingReader{data: data[1:], chunk: int(chunk)}
		src, ok, err := readProxyHeader(r, data[0])
		consumed := 1 + r.n

		limit := 1
		switch data[0] {
		case proxyV1Sig[0]:
			limit = proxyV1MaxLen
		case proxyV2Sig[0]:
			limit = 16 + proxyV2MaxLen
		}
		if consumed > limit {
			t.Fatalf("consumed %d bytes, more than a header's %d", consumed, limit)
		}
		if err != nil {
			checkReadError(t, err)
			if ok {
				t.Fatalf("ok with error %v", err)
			}
			return
		}
		// A header ends exactly where the spec says: at the first LF
		// (v1), or after the length its fixed part announces (v2).
		switch data[0] {
		case proxyV1Sig[0]:
			if i := bytes.IndexByte(data, '\n'); i != consumed-1 {
				t.Fatalf("v1 header consumed %d bytes, first LF at %d", consumed, i)
			}
		case proxyV2Sig[0]:
			if want := 16 + int(binary.BigEndian.Uint16(data[14:16])); consumed != want {
				t.Fatalf("v2 header consumed %d bytes, announces %d", consumed, want)
			}
			// An accepted header's TLVs split cleanly, by go-proxyproto's
			// own reading of the lengths.
			if fam := int(data[13] >> 4); fam < len(v2AddrLen) && 16+v2AddrLen[fam] <= consumed {
				if _, err := proxyproto.SplitTLVs(data[16+v2AddrLen[fam] : consumed]); err != nil {
					t.Fatalf("accepted a header whose TLVs do not split: %v", err)
				}
			}
		}
		if ok && (!src.IsValid() || src.Addr().Is4In6() || src.Addr().Zone() != "") {
			t.Fatalf("source %v: want a valid address, unmapped and without zone", src)
		}
		if !ok && src.IsValid() {
			t.Fatalf("source %v returned with ok false", src)
		}
	})
}

// serveFuzz is a Server that is never Run: FuzzServe hands it sockets
// accepted from its own listener, as the accept loop would.
type serveFuzz struct {
	srv  *Server
	ln   net.Listener
	logs *observer.ObservedLogs // errors only
	runs int
	// listen addresses as configured: PostgreSQL, Redis, and a PostgreSQL
	// address shared by two routes
	pg, redis, shared string
}

func newServeFuzz(f *testing.F) *serveFuzz {
	pki := testenv.NewPKI(f)
	dir := f.TempDir()
	rules := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte("rules:\n  - id: 00000000-0000-4000-8000-000000000001\n    cidr: 127.0.0.1/32\n"), 0o644); err != nil {
		f.Fatal(err)
	}
	h := &serveFuzz{pg: testenv.FreeAddr(f), redis: testenv.FreeAddr(f), shared: testenv.FreeAddr(f)}
	// Upstreams at a closed port: nothing here gets past the checks but a
	// plaintext CancelRequest, whose forwarding then fails at once.
	cfg := fmt.Sprintf(`proxy_protocol:
  trusted_cidrs: [127.0.0.3/32]
tls:
  cert_file: %[1]s
  key_file: %[2]s
  client_ca_file: %[3]s
  crl_file: %[4]s
limits:
  handshake_timeout: 1s
  upstream_connect_timeout: 1s
routes:
  - {name: db, protocol: postgres, listen: %[5]q, upstream: "127.0.0.1:1", ip_rules_file: %[8]s}
  - {name: cache, protocol: redis, listen: %[6]q, upstream: "127.0.0.1:1", ip_rules_file: %[8]s}
  - {name: alpha, protocol: postgres, listen: %[7]q, server_names: [alpha.test], upstream: "127.0.0.1:1", ip_rules_file: %[8]s}
  - {name: beta, protocol: postgres, listen: %[7]q, server_names: [beta.test], upstream: "127.0.0.1:1", ip_rules_file: %[8]s}
`, pki.ServerCertFile, pki.ServerKeyFile, pki.CAFile, pki.CRLFile, h.pg, h.redis, h.shared, rules)
	path := filepath.Join(dir, "spacegate.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		f.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		f.Fatal(err)
	}
	core, logs := observer.New(zapcore.ErrorLevel)
	h.logs = logs
	if h.srv, err = NewServer(Options{Config: c, Logger: zap.New(core)}); err != nil {
		f.Fatal(err)
	}
	// Run would start the engine that closes refused clients gracefully.
	eng, err := h.srv.startEngine()
	if err != nil {
		f.Fatal(err)
	}
	h.srv.engine = eng
	f.Cleanup(eng.Stop)
	if h.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { h.ln.Close() })
	return h
}

// panics returns spacegate_panics_total.
func (h *serveFuzz) panics(t *testing.T) float64 {
	mfs, err := h.srv.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "spacegate_panics_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no spacegate_panics_total")
	return 0
}

// disallowedSource returns the n-th loopback address in no rule of the
// fuzz targets (127.0.0.4-127.0.0.254). Spread over many sources, their
// strangers stay mostly short of the courtesy bound (courtesyRefusals a
// window), past which a stranger is closed before TLS.
func disallowedSource(n int) string { return fmt.Sprintf("127.0.0.%d", 4+n%251) }

// FuzzServe runs a connection's serve, from accept to finish, on a real
// loopback socket whose client sends the fuzzed bytes and half-closes, so
// that any first bytes reach the refusal path (finish, tellClient,
// tellRedis). The client speaks from an allowed, a disallowed or a
// PROXY-trusted address. serve must return within its bounds and release
// everything, and what the client reads must be a well-formed refusal in
// its protocol: RESP error lines for Redis; for PostgreSQL at most one 'N',
// then TLS, or else at most one FATAL ErrorResponse.
func FuzzServe(f *testing.F) {
	h := newServeFuzz(f)
	ssl, gssenc := startupPacket(codeSSLRequest, nil), startupPacket(codeGSSENCRequest, nil)
	startup := startupPacket(protocolMajor3<<16, []byte("user\x00postgres\x00\x00"))
	v1 := []byte("PROXY TCP4 127.0.0.1 127.0.0.1 40000 5432\r\n")
	for _, s := range []struct {
		route, src  uint8
		interactive bool
		data        []byte
	}{
		{1, 1, false, []byte("PING\r\n")}, // issue 12: killed the gate
		{1, 0, false, []byte("\r\n\r\n")},
		{1, 2, false, append(v1, "PING\r\n"...)},
		{1, 2, false, []byte("PROXY garbage\r\n")},
		{1, 0, false, []byte("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n")},
		{1, 1, false, clientHello(f)},
		{0, 0, false, startup},
		{0, 1, false, []byte("PING\r\n")},
		{0, 2, false, append(v1, startup...)},
		{0, 1, false, append(ssl, startup...)},
		{0, 0, true, append(ssl, clientHello(f, alpnPostgres)...)},
		{2, 0, true, append(gssenc, ssl...)},
		{2, 2, false, startupPacket(codeCancelRequest, []byte{0, 0, 0, 1, 0, 0, 0, 2})},
		{0, 1, false, append(gssenc, gssenc...)},
		{2, 1, false, clientHello(f, alpnPostgres)},
		{0, 1, true, []byte("\x00\x00\x00\x08\x00\x00\x30\x30")}, // protocol 0.12336: answered in protocol 2's format
	} {
		f.Add(s.route, s.src, s.interactive, s.data)
	}
	f.Fuzz(func(t *testing.T, route, src uint8, interactive bool, data []byte) {
		addr := []string{h.pg, h.redis, h.shared}[route%3]
		redis := addr == h.redis
		from := []string{"127.0.0.1", disallowedSource(h.runs), "127.0.0.3"}[src%3]
		h.runs++
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		nc, err := d.Dial("tcp", h.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		sc, err := h.ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		type answer struct {
			out []byte
			err error
		}
		answered := make(chan answer, 1)
		go func() {
			_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
			var out []byte
			in := data
			// A PostgreSQL client waits for the answer to each SSLRequest
			// and GSSENCRequest before it sends more.
			for interactive && !redis && len(in) >= 8 && (bytes.Equal(in[:8], ssl) || bytes.Equal(in[:8], gssenc)) {
				var b [1]byte
				if _, err := nc.Write(in[:8]); err != nil {
					break
				}
				if _, err := io.ReadFull(nc, b[:]); err != nil {
					break
				}
				out, in = append(out, b[0]), in[8:]
			}
			_, _ = nc.Write(in) // fails if the gate has refused and closed: fine
			_ = nc.(*net.TCPConn).CloseWrite()
			rest, err := io.ReadAll(io.LimitReader(nc, 1<<20))
			answered <- answer{append(out, rest...), err}
		}()
		// As the accept loop does, which may close it before TLS.
		h.srv.accepted(context.Background(), addr, sc)
		if !waitTimeout(&h.srv.wg, 10*time.Second) {
			t.Fatal("serve still running after 10s")
		}
		a := <-answered
		if n, p := h.srv.conns.len(), h.srv.pending.Load(); n != 0 || p != 0 {
			t.Fatalf("after serve: %d connections listed, %d pending", n, p)
		}
		// A panic recovered in serve is logged with its stack and counted.
		if l := h.logs.TakeAll(); len(l) > 0 {
			t.Fatalf("logged an error: %s %v", l[0].Message, l[0].ContextMap())
		}
		if n := h.panics(t); n != 0 {
			t.Fatalf("spacegate_panics_total %v", n)
		}
		// A reset may cut the answer short; a clean end may not.
		whole := a.err == nil
		if redis {
			checkRESPRefusal(t, a.out, whole)
		} else {
			checkPgRefusal(t, a.out, whole)
		}
	})
}

// isTLSRecord reports whether b starts like a TLS record: an alert or a
// handshake.
func isTLSRecord(b []byte) bool { return len(b) > 0 && (b[0] == 0x15 || b[0] == 0x16) }

// checkRESPRefusal fails t unless out is what a refused Redis client may
// read: TLS records, or up to redisRefuseMaxCommands copies of one RESP
// error line (the last one cut short if whole is false).
func checkRESPRefusal(t *testing.T, out []byte, whole bool) {
	t.Helper()
	if isTLSRecord(out) {
		return
	}
	lines := bytes.SplitAfter(out, []byte("\r\n"))
	if last := lines[len(lines)-1]; len(last) > 0 && whole {
		t.Fatalf("answer %.300q ends in an unfinished line", out)
	}
	first := lines[0]
	if len(out) > 0 && !bytes.HasPrefix(first, []byte("-ERR spacegate: ")) && !bytes.HasPrefix([]byte("-ERR spacegate: "), first) {
		t.Fatalf("answer %.300q is not a RESP error from the gate", out)
	}
	n := 0
	for _, l := range lines {
		if len(l) == 0 {
			continue
		}
		n++
		if !bytes.Equal(l, first) && !(len(l) < len(first) && bytes.HasPrefix(first, l)) {
			t.Fatalf("answer %.300q: line %q differs from the first %q", out, l, first)
		}
		if bytes.Count(l, []byte("\r")) > 1 || bytes.Count(l, []byte("\n")) > 1 {
			t.Fatalf("answer %.300q: line %q carries a CR or LF inside it", out, l)
		}
	}
	if n > redisRefuseMaxCommands {
		t.Fatalf("%d answers, more than the %d commands a refused client is answered", n, redisRefuseMaxCommands)
	}
}

// checkPgRefusal fails t unless out is what a refused PostgreSQL client may
// read: at most one 'N' (GSSENCRequest), then TLS (direct, or after an
// 'S'), or at most one FATAL ErrorResponse (or its protocol 2 form) and
// nothing after it (cut short if whole is false).
func checkPgRefusal(t *testing.T, out []byte, whole bool) {
	t.Helper()
	rest := out
	if len(rest) > 0 && rest[0] == 'N' {
		rest = rest[1:]
	}
	switch {
	case len(rest) == 0, isTLSRecord(rest): // direct TLS
		return
	case rest[0] == 'S':
		if len(rest) > 1 && !isTLSRecord(rest[1:]) {
			t.Fatalf("answer %.300q: plaintext after 'S'", out)
		}
		return
	case rest[0] != 'E':
		t.Fatalf("answer %.300q: want an ErrorResponse", out)
	case bytes.HasPrefix(rest, []byte("EF")):
		// To a client of protocol 2 or older, as PostgreSQL answers it:
		// 'E', then one NUL-terminated line. (A v3 length never starts
		// with 'F': that would be over 1 GB.)
		line, after, ok := bytes.Cut(rest[1:], []byte{0})
		switch {
		case !ok && whole:
			t.Fatalf("answer %.300q: protocol 2 error without its NUL", out)
		case ok && (len(after) > 0 || !bytes.HasPrefix(line, []byte("FATAL:  ")) || !bytes.HasSuffix(line, []byte("\n"))):
			t.Fatalf("answer %.300q: want one protocol 2 line \"FATAL:  ...\\n\" and nothing after it", out)
		}
		return
	}
	if len(rest) < 5 {
		if whole {
			t.Fatalf("answer %.300q: ErrorResponse cut short", out)
		}
		return
	}
	n := int(binary.BigEndian.Uint32(rest[1:5]))
	switch {
	case len(rest) > 1+n:
		t.Fatalf("answer %.300q: %d bytes after the ErrorResponse", out, len(rest)-1-n)
	case len(rest) < 1+n:
		if whole {
			t.Fatalf("answer %.300q: ErrorResponse of %d bytes cut short at %d", out, n, len(rest)-1)
		}
		return
	}
	var er pgproto3.ErrorResponse
	if err := er.Decode(rest[5:]); err != nil {
		t.Fatalf("answer %.300q: %v", out, err)
	}
	if er.Severity != "FATAL" || len(er.Code) != 5 || er.Message == "" {
		t.Fatalf("answer %.300q: want FATAL with a SQLSTATE and a message, got %s %q %q", out, er.Severity, er.Code, er.Message)
	}
}
