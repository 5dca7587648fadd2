package tlsconf

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestCAFiles(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "space CA")
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := ca.WriteFiles(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]fs.FileMode{certFile: 0o644, keyFile: 0o600} {
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", file, fi.Mode().Perm(), want)
		}
	}
	loaded, err := LoadCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) || !keyMatches(loaded.Cert, loaded.Key) || !bytes.Equal(loaded.CertPEM, ca.CertPEM) {
		t.Errorf("LoadCA returned a different CA")
	}
	if _, err := loaded.Issue(IssueRequest{CommonName: "alice"}); err != nil {
		t.Errorf("issuing from loaded CA: %v", err)
	}

	// A second write must not replace either file.
	other := newTestCA(t, "other CA")
	if err := other.WriteFiles(certFile, filepath.Join(dir, "new.key")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("WriteFiles over existing cert: %v, want fs.ErrExist", err)
	}
	if err := other.WriteFiles(filepath.Join(dir, "new.crt"), keyFile); !errors.Is(err, fs.ErrExist) {
		t.Errorf("WriteFiles over existing key: %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(certFile); !bytes.Equal(got, ca.CertPEM) {
		t.Errorf("existing CA certificate was overwritten")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("directory holds %d entries after refused writes, want 2", len(entries))
	}

	tests := []struct {
		name      string
		cert, key string // in dir
		wantErr   error
	}{
		{"key of another CA", "ca.crt", "other.key", ErrKeyMismatch},
		{"leaf as CA", "leaf.crt", "leaf.key", ErrNotCA},
		{"missing key", "ca.crt", "none.key", fs.ErrNotExist},
		{"truncated cert", "short.crt", "ca.key", ErrIncompletePEM},
	}
	otherKey, _ := marshalKeyPEM(other.Key)
	writeFile(t, dir, "other.key", otherKey)
	leaf := mustIssue(t, ca, IssueRequest{CommonName: "leaf"})
	writeFile(t, dir, "leaf.crt", leaf.CertPEM)
	writeFile(t, dir, "leaf.key", leaf.KeyPEM)
	writeFile(t, dir, "short.crt", ca.CertPEM[:100])
	for _, tt := range tests {
		_, err := LoadCA(filepath.Join(dir, tt.cert), filepath.Join(dir, tt.key))
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: LoadCA error %v, want %v", tt.name, err, tt.wantErr)
		}
	}
}

func TestIssue(t *testing.T) {
	ca := newTestCA(t, "space CA")
	before := time.Now()
	tests := []struct {
		name        string
		req         IssueRequest
		wantEKU     []x509.ExtKeyUsage
		wantMonths  int // default validity, when NotAfter is zero
		wantRSABits int // 0 for ECDSA P-256
	}{
		{"client", IssueRequest{CommonName: "alice"}, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, 13, 0},
		{"server", IssueRequest{CommonName: "db", DNSNames: []string{"db.example"}, IPAddresses: []net.IP{net.ParseIP("10.0.0.5")}, Server: true},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, 12, 0},
		{"RSA client", IssueRequest{CommonName: "bob", KeyType: KeyRSA2048}, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, 13, 2048},
		{"weak RSA", IssueRequest{CommonName: "weak", KeyType: KeyRSA1024}, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, 13, 1024},
		{"both usages", IssueRequest{CommonName: "both", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, 13, 0},
		{"intermediate", IssueRequest{CommonName: "inter", IsCA: true}, nil, 60, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is, err := ca.Issue(tt.req)
			if err != nil {
				t.Fatal(err)
			}
			c := is.Cert
			if err := c.CheckSignatureFrom(ca.Cert); err != nil {
				t.Errorf("not signed by the CA: %v", err)
			}
			if c.Subject.CommonName != tt.req.CommonName || !slices.Equal(c.DNSNames, tt.req.DNSNames) || len(c.IPAddresses) != len(tt.req.IPAddresses) {
				t.Errorf("subject %s, DNS %q, IPs %v; want the request's", c.Subject, c.DNSNames, c.IPAddresses)
			}
			if !slices.Equal(c.ExtKeyUsage, tt.wantEKU) || c.IsCA != tt.req.IsCA {
				t.Errorf("ExtKeyUsage %v, IsCA %v; want %v, %v", c.ExtKeyUsage, c.IsCA, tt.wantEKU, tt.req.IsCA)
			}
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
				t.Errorf("serial %s, want positive and at most 128 bits", c.SerialNumber)
			}
			if len(c.SubjectKeyId) != 20 || !bytes.Equal(c.AuthorityKeyId, ca.Cert.SubjectKeyId) {
				t.Errorf("SubjectKeyId %x, AuthorityKeyId %x; want 20 bytes and the CA's %x", c.SubjectKeyId, c.AuthorityKeyId, ca.Cert.SubjectKeyId)
			}
			if c.NotBefore.After(before) || c.NotBefore.Before(before.Add(-6*time.Minute)) {
				t.Errorf("NotBefore %v, want about 5 minutes before %v", c.NotBefore, before)
			}
			if want := c.NotBefore.AddDate(0, tt.wantMonths, 0); !c.NotAfter.Equal(want) {
				t.Errorf("NotAfter %v, want %v", c.NotAfter, want)
			}
			switch k := is.Key.(type) {
			case *ecdsa.PrivateKey:
				if tt.wantRSABits != 0 || k.Curve.Params().Name != "P-256" {
					t.Errorf("key ECDSA %s, want RSA %d", k.Curve.Params().Name, tt.wantRSABits)
				}
			case *rsa.PrivateKey:
				if k.N.BitLen() != tt.wantRSABits {
					t.Errorf("RSA key of %d bits, want %d", k.N.BitLen(), tt.wantRSABits)
				}
			}
			if !keyMatches(c, is.Key) {
				t.Errorf("key does not match certificate")
			}
			block, _ := pem.Decode(is.KeyPEM)
			der, err := is.PKCS8DER()
			if err != nil || block == nil || block.Type != "PRIVATE KEY" || !bytes.Equal(block.Bytes, der) {
				t.Errorf("KeyPEM is not the PKCS#8 PEM of PKCS8DER (%v)", err)
			}
			if _, err := x509.ParsePKCS8PrivateKey(der); err != nil {
				t.Errorf("PKCS8DER does not parse: %v", err)
			}
		})
	}

	t.Run("explicit dates", func(t *testing.T) {
		nb, na := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2030, 2, 1, 0, 0, 0, 0, time.UTC)
		is, err := ca.Issue(IssueRequest{CommonName: "later", NotBefore: nb, NotAfter: na})
		if err != nil {
			t.Fatal(err)
		}
		if !is.Cert.NotBefore.Equal(nb) || !is.Cert.NotAfter.Equal(na) {
			t.Errorf("validity %v to %v, want %v to %v", is.Cert.NotBefore, is.Cert.NotAfter, nb, na)
		}
	})

	t.Run("default validity ends with the CA", func(t *testing.T) {
		short, err := NewCA("short CA", KeyECDSAP256, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		is, err := short.Issue(IssueRequest{CommonName: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		if !is.Cert.NotAfter.Equal(short.Cert.NotAfter) {
			t.Errorf("NotAfter %v, want the CA's %v", is.Cert.NotAfter, short.Cert.NotAfter)
		}
	})

	for _, bad := range []struct {
		name string
		req  IssueRequest
	}{
		{"no name", IssueRequest{}},
		{"unknown key type", IssueRequest{CommonName: "x", KeyType: "dsa-512"}},
		{"NotAfter before NotBefore", IssueRequest{CommonName: "x", NotBefore: time.Now(), NotAfter: time.Now().Add(-time.Hour)}},
	} {
		if _, err := ca.Issue(bad.req); err == nil {
			t.Errorf("Issue(%s) succeeded, want an error", bad.name)
		}
	}
	if _, err := NewCA("", KeyECDSAP256, 0); err == nil {
		t.Errorf("NewCA with empty name succeeded")
	}
	if _, err := mustIssue(t, ca, IssueRequest{CommonName: "leaf"}).CA(); !errors.Is(err, ErrNotCA) {
		t.Errorf("Issued.CA of a leaf: %v, want ErrNotCA", err)
	}
}

func TestCRL(t *testing.T) {
	ca := newTestCA(t, "space CA")
	alice := mustIssue(t, ca, IssueRequest{CommonName: "alice"})
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	this, next := time.Now().Truncate(time.Second), time.Now().Add(time.Hour).Truncate(time.Second)
	pemCRL, err := ca.CRL([]x509.RevocationListEntry{{SerialNumber: alice.Cert.SerialNumber, RevocationTime: at}}, big.NewInt(42), this, next)
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(pemCRL)
	if block == nil || block.Type != "X509 CRL" || len(rest) != 0 {
		t.Fatalf("CRL is not one PEM X509 CRL block: %q", pemCRL)
	}
	crl, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	if crl.Number.Int64() != 42 || !crl.ThisUpdate.Equal(this) || !crl.NextUpdate.Equal(next) {
		t.Errorf("CRL number %v, this %v, next %v; want 42, %v, %v", crl.Number, crl.ThisUpdate, crl.NextUpdate, this, next)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(alice.Cert.SerialNumber) != 0 ||
		!crl.RevokedCertificateEntries[0].RevocationTime.Equal(at) {
		t.Errorf("CRL entries %+v, want alice revoked at %v", crl.RevokedCertificateEntries, at)
	}

	// Defaults: number from thisUpdate, next week.
	pemCRL, err = ca.CRL(nil, nil, this, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	block, _ = pem.Decode(pemCRL)
	if crl, err = x509.ParseRevocationList(block.Bytes); err != nil {
		t.Fatal(err)
	}
	if crl.Number.Int64() != this.Unix() || !crl.NextUpdate.Equal(this.Add(7*24*time.Hour)) {
		t.Errorf("default number %v and next update %v; want %d and a week after %v", crl.Number, crl.NextUpdate, this.Unix(), this)
	}
}
