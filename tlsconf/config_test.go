package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestParseMinVersion(t *testing.T) {
	tests := []struct {
		in      string
		want    uint16
		wantErr bool
	}{
		{"1.2", tls.VersionTLS12, false},
		{"1.3", tls.VersionTLS13, false},
		{"1.0", 0, true},
		{"1.1", 0, true},
		{"", 0, true},
		{"1.4", 0, true},
		{"TLS1.2", 0, true},
		{" 1.2", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseMinVersion(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseMinVersion(%q) = %#x, %v; want %#x, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !errors.Is(err, ErrTLSVersion) {
			t.Errorf("ParseMinVersion(%q) error %v does not wrap ErrTLSVersion", tt.in, err)
		}
	}
}

func TestServerConfig(t *testing.T) {
	m := newTestPKI(t).load(t, nil)
	tests := []struct {
		min        uint16
		protos     []string
		wantMin    uint16
		wantProtos int
	}{
		{tls.VersionTLS12, nil, tls.VersionTLS12, 0},
		{tls.VersionTLS13, []string{"postgresql"}, tls.VersionTLS13, 1},
		{tls.VersionTLS10, nil, tls.VersionTLS12, 0},
		{0, nil, tls.VersionTLS12, 0},
	}
	for _, tt := range tests {
		cfg := ServerConfig(m, tt.min, tt.protos)
		if cfg.MinVersion != tt.wantMin || len(cfg.NextProtos) != tt.wantProtos {
			t.Errorf("ServerConfig(%#x, %q): MinVersion %#x NextProtos %q; want %#x and %d protocol(s)",
				tt.min, tt.protos, cfg.MinVersion, cfg.NextProtos, tt.wantMin, tt.wantProtos)
		}
		for _, id := range cfg.CipherSuites {
			name := tls.CipherSuiteName(id)
			if !strings.HasPrefix(name, "TLS_ECDHE_") || !(strings.Contains(name, "_GCM_") || strings.Contains(name, "CHACHA20")) {
				t.Errorf("ServerConfig offers %s; want ECDHE with an AEAD only", name)
			}
		}
		if len(cfg.CipherSuites) == 0 {
			t.Errorf("ServerConfig: CipherSuites empty, which means Go's defaults with CBC suites")
		}
		if cfg.ClientAuth != tls.RequestClientCert || !cfg.SessionTicketsDisabled || cfg.ClientCAs != nil {
			t.Errorf("ServerConfig: ClientAuth %v, SessionTicketsDisabled %v, ClientCAs %v; want RequestClientCert, true, nil",
				cfg.ClientAuth, cfg.SessionTicketsDisabled, cfg.ClientCAs)
		}
	}
}

// handshake runs a TLS handshake between server and client over net.Pipe and
// returns both ends. Both handshakes must complete within a few seconds.
// Close the ends with closePipe: tls.Conn.Close would wait up to 5 seconds
// for nobody to read its close_notify from the unbuffered pipe.
func handshake(t testing.TB, server, client *tls.Config) (*tls.Conn, *tls.Conn) {
	t.Helper()
	sc, cc := net.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv, cli := tls.Server(sc, server), tls.Client(cc, client)
	errc := make(chan error, 1)
	go func() { errc <- cli.HandshakeContext(ctx) }()
	serr := srv.HandshakeContext(ctx)
	cerr := <-errc
	if serr != nil || cerr != nil {
		closePipe(srv, cli)
		t.Fatalf("handshake: server: %v; client: %v", serr, cerr)
	}
	return srv, cli
}

func closePipe(conns ...*tls.Conn) {
	for _, c := range conns {
		c.NetConn().Close()
	}
}

func TestHandshakeThenVerify(t *testing.T) {
	p := newTestPKI(t)
	foreign := newTestCA(t, "foreign CA")
	now := time.Now()
	good := mustIssue(t, p.ca, IssueRequest{CommonName: "alice"})
	stranger := mustIssue(t, foreign, IssueRequest{CommonName: "mallory"})
	expired := mustIssue(t, p.ca, IssueRequest{CommonName: "old", NotBefore: now.Add(-30 * time.Minute), NotAfter: now.Add(-time.Minute)})
	m := p.load(t, nil)
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)

	tests := []struct {
		name  string
		certs []tls.Certificate
		max   uint16
		want  Reason
	}{
		{"good TLS 1.3", []tls.Certificate{tlsCert(good)}, tls.VersionTLS13, ReasonOK},
		{"good TLS 1.2", []tls.Certificate{tlsCert(good)}, tls.VersionTLS12, ReasonOK},
		{"no cert", nil, tls.VersionTLS13, ReasonCertMissing},
		{"foreign CA", []tls.Certificate{tlsCert(stranger)}, tls.VersionTLS13, ReasonCertUntrusted},
		{"expired", []tls.Certificate{tlsCert(expired)}, tls.VersionTLS12, ReasonCertExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, cli := handshake(t, ServerConfig(m, tls.VersionTLS12, []string{"postgresql"}), &tls.Config{
				RootCAs:      roots,
				ServerName:   "localhost",
				Certificates: tt.certs,
				MaxVersion:   tt.max,
				NextProtos:   []string{"postgresql"},
			})
			defer closePipe(srv, cli)
			cs := srv.ConnectionState()
			if cs.Version != tt.max || cs.NegotiatedProtocol != "postgresql" {
				t.Errorf("version %#x, ALPN %q; want %#x, postgresql", cs.Version, cs.NegotiatedProtocol, tt.max)
			}
			_, err := m.Verify(cs.PeerCertificates, time.Now())
			var ve *VerifyError
			switch {
			case tt.want == ReasonOK && err != nil:
				t.Fatalf("Verify: %v", err)
			case tt.want != ReasonOK && !errors.As(err, &ve):
				t.Fatalf("Verify = %v, want a *VerifyError with reason %v", err, tt.want)
			case ve != nil && ve.Reason != tt.want:
				t.Fatalf("Verify reason %v, want %v (%v)", ve.Reason, tt.want, err)
			}
		})
	}
}

// TestNoResumption checks that a client offering a session cache gets a full
// handshake, and so a fresh Verify, every time.
func TestNoResumption(t *testing.T) {
	p := newTestPKI(t)
	m := p.load(t, nil)
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	client := &tls.Config{
		RootCAs:            roots,
		ServerName:         "localhost",
		Certificates:       []tls.Certificate{tlsCert(mustIssue(t, p.ca, IssueRequest{CommonName: "alice"}))},
		ClientSessionCache: tls.NewLRUClientSessionCache(4),
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		client.MaxVersion = v
		for i := range 2 {
			srv, cli := handshake(t, ServerConfig(m, tls.VersionTLS12, nil), client)
			// Exchange a byte so the client reads any TLS 1.3 ticket.
			errc := make(chan error, 1)
			go func() { _, err := srv.Write([]byte{'x'}); errc <- err }()
			if _, err := io.ReadFull(cli, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if cli.ConnectionState().DidResume {
				t.Errorf("version %#x connection %d resumed a session", v, i)
			}
			closePipe(srv, cli)
		}
	}
}

func BenchmarkHandshake(b *testing.B) {
	p := newTestPKI(b)
	m := p.load(b, nil)
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	server := ServerConfig(m, tls.VersionTLS12, nil)
	client := &tls.Config{
		RootCAs:      roots,
		ServerName:   "localhost",
		Certificates: []tls.Certificate{tlsCert(mustIssue(b, p.ca, IssueRequest{CommonName: "alice"}))},
	}
	b.ReportAllocs()
	for b.Loop() {
		srv, cli := handshake(b, server, client)
		if _, err := m.Verify(srv.ConnectionState().PeerCertificates, time.Now()); err != nil {
			b.Fatal(err)
		}
		closePipe(srv, cli)
	}
}
