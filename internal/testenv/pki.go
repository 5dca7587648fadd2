package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/atomicfile"
	"github.com/spacegate/spacegate/tlsconf"
)

// PKI is a throwaway space CA with a server certificate on disk, for tests
// that run spacegate or talk to it. Its files live in Dir, a t.TempDir():
// CAFile (ca.crt), ServerCertFile (server.crt), ServerKeyFile (server.key,
// mode 0600) and CRLFile (ca.crl, a CRL signed by the CA, empty until
// Revoke). The server certificate is for localhost, 127.0.0.1 and ::1.
//
// A PKI is safe for concurrent use. Its exported fields must not be
// changed.
type PKI struct {
	Dir            string
	CA             *tlsconf.CA
	CAFile         string
	ServerCertFile string
	ServerKeyFile  string
	CRLFile        string

	mu      sync.Mutex
	revoked []x509.RevocationListEntry // every certificate Revoke was given
	crlSeq  int64                      // number of the CRL in CRLFile
}

// NewPKI creates a CA named "spacegate test CA" and a server certificate in
// a new temporary directory. It fails t on any error.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	ca, err := tlsconf.NewCA("spacegate test CA", tlsconf.KeyECDSAP256, 0)
	if err != nil {
		t.Fatalf("creating test CA: %v", err)
	}
	server, err := ca.Issue(tlsconf.IssueRequest{
		CommonName: "localhost",
		DNSNames:   []string{"localhost"},
		// crypto/x509 takes net.IP, not netip.Addr.
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		Server:      true,
	})
	if err != nil {
		t.Fatalf("issuing test server certificate: %v", err)
	}
	p := &PKI{
		Dir:            dir,
		CA:             ca,
		CAFile:         filepath.Join(dir, "ca.crt"),
		ServerCertFile: filepath.Join(dir, "server.crt"),
		ServerKeyFile:  filepath.Join(dir, "server.key"),
		CRLFile:        filepath.Join(dir, "ca.crl"),
	}
	pkiWrite(t, p.CAFile, ca.CertPEM, 0o644)
	pkiWrite(t, p.ServerCertFile, server.CertPEM, 0o644)
	pkiWrite(t, p.ServerKeyFile, server.KeyPEM, 0o600)
	p.Revoke(t)
	return p
}

// ClientCert is one client certificate on disk, as libpq wants it: the
// certificate in CertFile and its PKCS#8 key in KeyFile with mode 0600.
type ClientCert struct {
	CertFile string
	KeyFile  string
	Serial   string // as tlsconf.FormatSerial gives it, which Identity.Serial uses
	Cert     *x509.Certificate
	TLS      tls.Certificate // for Go clients: tls.Config.Certificates
}

// ClientOption changes the request for a client certificate.
type ClientOption func(*tlsconf.IssueRequest)

// Expired makes a certificate that expired ten minutes ago. Its validity
// still starts after the test CA's, so verification reports it expired, not
// untrusted.
func Expired() ClientOption {
	return func(r *tlsconf.IssueRequest) {
		now := time.Now()
		r.NotBefore, r.NotAfter = now.Add(-30*time.Minute), now.Add(-10*time.Minute)
	}
}

// NotYetValid makes a certificate valid from an hour from now.
func NotYetValid() ClientOption {
	return func(r *tlsconf.IssueRequest) {
		now := time.Now()
		r.NotBefore, r.NotAfter = now.Add(time.Hour), now.Add(2*time.Hour)
	}
}

// NoClientAuth makes a certificate for server authentication only.
func NoClientAuth() ClientOption {
	return func(r *tlsconf.IssueRequest) { r.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }
}

// WithCN sets the certificate's common name, which is otherwise the name
// given to Client.
func WithCN(cn string) ClientOption {
	return func(r *tlsconf.IssueRequest) { r.CommonName = cn }
}

// WithURI adds a URI subject alternative name, such as a SPIFFE ID. It
// panics if uri does not parse, as a test's literal always should.
func WithURI(uri string) ClientOption {
	u, err := url.Parse(uri)
	if err != nil {
		panic(fmt.Sprintf("testenv.WithURI(%q): %v", uri, err))
	}
	return func(r *tlsconf.IssueRequest) { r.URIs = append(r.URIs, u) }
}

// WithKeyType sets the key type of the certificate.
func WithKeyType(k tlsconf.KeyType) ClientOption {
	return func(r *tlsconf.IssueRequest) { r.KeyType = k }
}

// Client issues a client certificate signed by the test CA, with common name
// name unless an option sets another, and writes it to name.crt and name.key
// in Dir. name must be a plain file name. It fails t on any error.
func (p *PKI) Client(t testing.TB, name string, opts ...ClientOption) *ClientCert {
	t.Helper()
	return writeClientCert(t, p.CA, p.Dir, name, opts)
}

// ForeignClient issues a client certificate, CN=name, signed by a new CA that
// the test CA does not know, and writes it to name.crt and name.key in Dir.
// A gate using this PKI refuses it as untrusted.
func (p *PKI) ForeignClient(t testing.TB, name string) *ClientCert {
	t.Helper()
	foreign, err := tlsconf.NewCA("untrusted test CA", tlsconf.KeyECDSAP256, 0)
	if err != nil {
		t.Fatalf("creating foreign CA: %v", err)
	}
	return writeClientCert(t, foreign, p.Dir, name, nil)
}

func writeClientCert(t testing.TB, ca *tlsconf.CA, dir, name string, opts []ClientOption) *ClientCert {
	t.Helper()
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		t.Fatalf("client certificate name %q: want a plain file name", name)
	}
	req := tlsconf.IssueRequest{CommonName: name}
	for _, o := range opts {
		o(&req)
	}
	is, err := ca.Issue(req)
	if err != nil {
		t.Fatalf("issuing client certificate %q: %v", name, err)
	}
	c := &ClientCert{
		CertFile: filepath.Join(dir, name+".crt"),
		KeyFile:  filepath.Join(dir, name+".key"),
		Serial:   tlsconf.FormatSerial(is.Cert.SerialNumber),
		Cert:     is.Cert,
		TLS:      tls.Certificate{Certificate: [][]byte{is.Cert.Raw}, PrivateKey: is.Key, Leaf: is.Cert},
	}
	pkiWrite(t, c.CertFile, is.CertPEM, 0o644)
	pkiWrite(t, c.KeyFile, is.KeyPEM, 0o600)
	return c
}

// Revoke adds certs to the revoked certificates and atomically rewrites
// CRLFile with a new CRL, numbered one higher, that lists every certificate
// revoked so far. With no certs it rewrites the CRL unchanged but for its
// number and dates, which a test of reloading can use. It fails t on any
// error.
func (p *PKI) Revoke(t testing.TB, certs ...*ClientCert) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for _, c := range certs {
		p.revoked = append(p.revoked, x509.RevocationListEntry{SerialNumber: c.Cert.SerialNumber, RevocationTime: now})
	}
	p.crlSeq++
	crl, err := p.CA.CRL(p.revoked, big.NewInt(p.crlSeq), now.Add(-time.Minute), now.Add(24*time.Hour))
	if err != nil {
		t.Fatalf("signing test CRL: %v", err)
	}
	pkiWrite(t, p.CRLFile, crl, 0o644)
}

// ServerPool returns a new pool holding the test CA, for Go clients that
// verify the gate's server certificate (tls.Config.RootCAs).
func (p *PKI) ServerPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	return pool
}

// pkiWrite writes a PKI file atomically, so a gate watching Dir never reads
// half of one.
func pkiWrite(t testing.TB, path string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := atomicfile.WriteFile(path, data, perm); err != nil {
		t.Fatalf("writing %s: %v", path, err)
	}
}

// ForRoutes gives the certificate the URI SAN of each named route, as
// `spacegate certs create` does, so that routes with the default
// allowed_clients accept it.
func ForRoutes(routes ...string) ClientOption {
	return func(r *tlsconf.IssueRequest) {
		for _, route := range routes {
			u, _ := url.Parse(tlsconf.RouteURI("test.spacegate", route, r.CommonName))
			r.URIs = append(r.URIs, u)
		}
	}
}
