package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/spacegate/spacegate/tlsconf"
)

func TestPKIFiles(t *testing.T) {
	p := NewPKI(t)
	alice := p.Client(t, "alice")
	for path, want := range map[string]os.FileMode{
		p.CAFile: 0o644, p.ServerCertFile: 0o644, p.ServerKeyFile: 0o600, p.CRLFile: 0o644,
		alice.CertFile: 0o644, alice.KeyFile: 0o600,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	if _, err := tls.LoadX509KeyPair(alice.CertFile, alice.KeyFile); err != nil {
		t.Errorf("client files do not load as a key pair: %v", err)
	}
	server, err := tls.LoadX509KeyPair(p.ServerCertFile, p.ServerKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := server.Leaf.Verify(x509.VerifyOptions{Roots: p.ServerPool(), DNSName: host}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
}

func TestPKIClientVerify(t *testing.T) {
	p := NewPKI(t)
	tests := []struct {
		name string
		cert *ClientCert
		want tlsconf.Reason
	}{
		{"good", p.Client(t, "alice", WithURI("spiffe://space/alice")), tlsconf.ReasonOK},
		{"RSA", p.Client(t, "rsa", WithKeyType(tlsconf.KeyRSA2048)), tlsconf.ReasonOK},
		{"expired", p.Client(t, "old", Expired()), tlsconf.ReasonCertExpired},
		{"not yet valid", p.Client(t, "early", NotYetValid()), tlsconf.ReasonCertNotYetValid},
		{"no clientAuth", p.Client(t, "server-only", NoClientAuth()), tlsconf.ReasonCertUsage},
		{"foreign", p.ForeignClient(t, "mallory"), tlsconf.ReasonCertUntrusted},
		{"revoked", p.Client(t, "eve", WithCN("eve@example")), tlsconf.ReasonCertRevoked},
	}
	p.Revoke(t, tests[len(tests)-1].cert)

	m, err := tlsconf.Load(tlsconf.Files{CertFile: p.ServerCertFile, KeyFile: p.ServerKeyFile, ClientCAFile: p.CAFile, CRLFile: p.CRLFile})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := m.Verify([]*x509.Certificate{tt.cert.Cert}, time.Now())
			var ve *tlsconf.VerifyError
			switch {
			case tt.want == tlsconf.ReasonOK && err != nil:
				t.Fatalf("Verify: %v", err)
			case tt.want != tlsconf.ReasonOK && (!errors.As(err, &ve) || ve.Reason != tt.want):
				t.Fatalf("Verify = %v, want reason %v", err, tt.want)
			}
			if id.Serial != tt.cert.Serial {
				t.Errorf("Identity.Serial %q, ClientCert.Serial %q", id.Serial, tt.cert.Serial)
			}
		})
	}
	if id, _ := m.Verify([]*x509.Certificate{tests[len(tests)-1].cert.Cert}, time.Now()); id.CommonName != "eve@example" {
		t.Errorf("WithCN: common name %q, want eve@example", id.CommonName)
	}
}
