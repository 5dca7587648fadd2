package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testPKI is a CA with a server certificate, for tests in this package.
type testPKI struct {
	ca     *CA
	server *Issued
}

func newTestCA(t testing.TB, name string) *CA {
	t.Helper()
	ca, err := NewCA(name, KeyECDSAP256, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	ca := newTestCA(t, "test CA")
	return &testPKI{ca: ca, server: mustIssue(t, ca, IssueRequest{CommonName: "localhost", DNSNames: []string{"localhost"}, Server: true})}
}

func mustIssue(t testing.TB, ca *CA, req IssueRequest) *Issued {
	t.Helper()
	is, err := ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	return is
}

// writeFile writes data to a file name in dir and returns its path.
func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// files writes the server cert and key and a CA bundle of cas into a new
// temporary directory, and a CRL when crl is not nil.
func (p *testPKI) files(t testing.TB, crl []byte, cas ...*CA) Files {
	t.Helper()
	dir := t.TempDir()
	if len(cas) == 0 {
		cas = []*CA{p.ca}
	}
	var bundle []byte
	for _, ca := range cas {
		bundle = append(bundle, ca.CertPEM...)
	}
	f := Files{
		CertFile:     writeFile(t, dir, "server.crt", p.server.CertPEM),
		KeyFile:      writeFile(t, dir, "server.key", p.server.KeyPEM),
		ClientCAFile: writeFile(t, dir, "ca.crt", bundle),
	}
	if crl != nil {
		f.CRLFile = writeFile(t, dir, "ca.crl", crl)
	}
	return f
}

func (p *testPKI) load(t testing.TB, crl []byte, cas ...*CA) *Material {
	t.Helper()
	m, err := Load(p.files(t, crl, cas...))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func tlsCert(is *Issued, chain ...*Issued) tls.Certificate {
	c := tls.Certificate{Certificate: [][]byte{is.Cert.Raw}, PrivateKey: is.Key, Leaf: is.Cert}
	for _, i := range chain {
		c.Certificate = append(c.Certificate, i.Cert.Raw)
	}
	return c
}

// mustCRL returns a PEM CRL signed by ca that lists revoked as revoked at at.
func mustCRL(t testing.TB, ca *CA, at time.Time, revoked ...*Issued) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, r := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: r.Cert.SerialNumber, RevocationTime: at})
	}
	crl, err := ca.CRL(entries, nil, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return crl
}
