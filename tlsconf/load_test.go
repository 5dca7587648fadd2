package tlsconf

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/safefile"
)

func TestLoad(t *testing.T) {
	p := newTestPKI(t)
	second := newTestCA(t, "second CA")
	foreign := newTestCA(t, "foreign CA")
	client := mustIssue(t, p.ca, IssueRequest{CommonName: "alice"})
	otherServer := mustIssue(t, p.ca, IssueRequest{CommonName: "other", Server: true})
	crl := mustCRL(t, p.ca, time.Now(), client)
	crlBlock, _ := pem.Decode(crl)

	tests := []struct {
		name string
		// edit changes the files of a good setup (server cert and key,
		// CA bundle of p.ca and second, CRL of p.ca) in dir.
		edit     func(t *testing.T, dir string, f *Files)
		wantErrs []error  // each must match with errors.Is
		wantText []string // each must appear in the error
	}{
		{name: "good", edit: func(*testing.T, string, *Files) {}},
		{name: "no CRL", edit: func(_ *testing.T, _ string, f *Files) { f.CRLFile = "" }},
		{name: "DER CRL", edit: func(t *testing.T, dir string, f *Files) {
			f.CRLFile = writeFile(t, dir, "ca.crl.der", crlBlock.Bytes)
		}},
		{name: "CRL by second CA", edit: func(t *testing.T, dir string, f *Files) {
			f.CRLFile = writeFile(t, dir, "ca.crl", mustCRL(t, second, time.Now()))
		}},
		{name: "key with EC PARAMETERS block and SEC 1 encoding", edit: func(t *testing.T, dir string, f *Files) {
			// As `openssl ecparam -genkey` writes it.
			der, err := x509.MarshalECPrivateKey(p.server.Key.(*ecdsa.PrivateKey))
			if err != nil {
				t.Fatal(err)
			}
			params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}})
			f.KeyFile = writeFile(t, dir, "server.key", append(params, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...))
		}},
		{
			name:     "missing cert file",
			edit:     func(_ *testing.T, dir string, f *Files) { f.CertFile = filepath.Join(dir, "nope.crt") },
			wantErrs: []error{fs.ErrNotExist},
			wantText: []string{"reading certificate file", "nope.crt"},
		},
		{
			name: "CRL file is a FIFO",
			edit: func(t *testing.T, dir string, f *Files) {
				f.CRLFile = filepath.Join(dir, "fifo.crl")
				if err := syscall.Mkfifo(f.CRLFile, 0o644); err != nil {
					t.Fatal(err)
				}
			},
			wantErrs: []error{safefile.ErrNotRegular},
			wantText: []string{"CRL file ", "fifo.crl is a FIFO (named pipe), not a regular file"},
		},
		{
			name:     "client CA file is /dev/zero",
			edit:     func(_ *testing.T, _ string, f *Files) { f.ClientCAFile = "/dev/zero" },
			wantErrs: []error{safefile.ErrNotRegular},
			wantText: []string{"client CA file /dev/zero is a character device"},
		},
		{
			name: "key file over its limit",
			edit: func(t *testing.T, dir string, f *Files) {
				f.KeyFile = writeFile(t, dir, "server.key", nil)
				if err := os.Truncate(f.KeyFile, safefile.Key.Max+1); err != nil {
					t.Fatal(err)
				}
			},
			wantErrs: []error{safefile.ErrTooLarge},
			wantText: []string{"server.key is 1048577 bytes; the limit for a key file is 1 MiB"},
		},
		{
			name:     "empty file name",
			edit:     func(_ *testing.T, _ string, f *Files) { f.ClientCAFile = "" },
			wantText: []string{"client CA file: no file name given"},
		},
		{
			name: "key does not match",
			edit: func(t *testing.T, dir string, f *Files) {
				f.KeyFile = writeFile(t, dir, "server.key", otherServer.KeyPEM)
			},
			wantErrs: []error{ErrKeyMismatch},
			wantText: []string{"does not match certificate file", "server.key", "server.crt"},
		},
		{
			name: "truncated cert",
			edit: func(t *testing.T, dir string, f *Files) {
				f.CertFile = writeFile(t, dir, "server.crt", p.server.CertPEM[:len(p.server.CertPEM)/2])
			},
			wantErrs: []error{ErrIncompletePEM},
			wantText: []string{"server.crt"},
		},
		{
			name: "truncated second CA in bundle",
			edit: func(t *testing.T, dir string, f *Files) {
				bundle := append(append([]byte(nil), p.ca.CertPEM...), second.CertPEM[:len(second.CertPEM)-30]...)
				f.ClientCAFile = writeFile(t, dir, "ca.crt", bundle)
			},
			wantErrs: []error{ErrIncompletePEM},
			wantText: []string{"ca.crt", "2 BEGIN line(s) but 1 complete block(s)"},
		},
		{
			name: "corrupt base64 before a good block",
			edit: func(t *testing.T, dir string, f *Files) {
				bad := strings.Replace(string(second.CertPEM), "M", "!", 3)
				f.ClientCAFile = writeFile(t, dir, "ca.crt", append([]byte(bad), p.ca.CertPEM...))
			},
			wantErrs: []error{ErrIncompletePEM},
		},
		{
			name: "truncated key",
			edit: func(t *testing.T, dir string, f *Files) {
				f.KeyFile = writeFile(t, dir, "server.key", p.server.KeyPEM[:40])
			},
			wantErrs: []error{ErrIncompletePEM},
			wantText: []string{"key file", "server.key"},
		},
		{
			name: "encrypted key",
			edit: func(t *testing.T, dir string, f *Files) {
				f.KeyFile = writeFile(t, dir, "server.key", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1, 2, 3}}))
			},
			wantErrs: []error{ErrEncryptedKey},
		},
		{
			name: "no key in key file",
			edit: func(t *testing.T, dir string, f *Files) {
				f.KeyFile = writeFile(t, dir, "server.key", p.server.CertPEM)
			},
			wantErrs: []error{ErrNoPrivateKey},
		},
		{
			name: "empty CA bundle",
			edit: func(t *testing.T, dir string, f *Files) {
				f.ClientCAFile = writeFile(t, dir, "ca.crt", []byte("# no certificates yet\n"))
			},
			wantErrs: []error{ErrNoCertificates},
			wantText: []string{"no PEM certificates in client CA file", "ca.crt"},
		},
		{
			name: "leaf in CA bundle",
			edit: func(t *testing.T, dir string, f *Files) {
				f.ClientCAFile = writeFile(t, dir, "ca.crt", append(append([]byte(nil), p.ca.CertPEM...), p.server.CertPEM...))
			},
			wantErrs: []error{ErrNotCA},
			wantText: []string{"certificate 2 (CN=localhost)"},
		},
		{
			name: "client cert as server cert",
			edit: func(t *testing.T, dir string, f *Files) {
				f.CertFile = writeFile(t, dir, "server.crt", client.CertPEM)
				f.KeyFile = writeFile(t, dir, "server.key", client.KeyPEM)
			},
			wantText: []string{"serverAuth missing"},
		},
		{
			name: "CRL of another CA",
			edit: func(t *testing.T, dir string, f *Files) {
				f.CRLFile = writeFile(t, dir, "ca.crl", mustCRL(t, foreign, time.Now()))
			},
			wantErrs: []error{ErrCRLUnknownIssuer},
			wantText: []string{"ca.crl", "CN=foreign CA"},
		},
		{
			name: "CRL file holds a certificate",
			edit: func(t *testing.T, dir string, f *Files) {
				f.CRLFile = writeFile(t, dir, "ca.crl", p.ca.CertPEM)
			},
			wantText: []string{`no "X509 CRL" PEM block`},
		},
		{
			name: "garbage CRL",
			edit: func(t *testing.T, dir string, f *Files) {
				f.CRLFile = writeFile(t, dir, "ca.crl", []byte("not a CRL"))
			},
			wantText: []string{"ca.crl"},
		},
		{
			name: "every problem at once",
			edit: func(t *testing.T, dir string, f *Files) {
				f.CertFile = filepath.Join(dir, "nope.crt")
				f.KeyFile = writeFile(t, dir, "server.key", p.server.KeyPEM[:40])
				f.ClientCAFile = writeFile(t, dir, "ca.crt", nil)
				f.CRLFile = filepath.Join(dir, "nope.crl")
			},
			wantErrs: []error{fs.ErrNotExist, ErrIncompletePEM, ErrNoCertificates},
			wantText: []string{"nope.crt", "server.key", "ca.crt", "nope.crl"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := p.files(t, crl, p.ca, second)
			tt.edit(t, filepath.Dir(f.CertFile), &f)
			m, err := Load(f)
			if len(tt.wantErrs) == 0 && len(tt.wantText) == 0 {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				checkMaterial(t, m, f)
				return
			}
			if err == nil {
				t.Fatalf("Load succeeded, want an error")
			}
			if m != nil {
				t.Errorf("Load returned Material with an error")
			}
			for _, want := range tt.wantErrs {
				if !errors.Is(err, want) {
					t.Errorf("Load error %q does not wrap %v", err, want)
				}
			}
			for _, want := range tt.wantText {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Load error %q does not contain %q", err, want)
				}
			}
		})
	}
}

// checkMaterial checks the fields of m loaded from f.
func checkMaterial(t *testing.T, m *Material, f Files) {
	t.Helper()
	if m.Certificate.Leaf == nil || m.Certificate.Leaf.Subject.CommonName != "localhost" || m.Certificate.PrivateKey == nil {
		t.Errorf("Certificate: leaf %v, key %T; want the localhost certificate and its key", m.Certificate.Leaf, m.Certificate.PrivateKey)
	}
	if len(m.CAs) != 2 || m.ClientCAs == nil {
		t.Errorf("CAs: %d, pool %v; want 2 and a pool", len(m.CAs), m.ClientCAs)
	}
	if (f.CRLFile == "") != (len(m.CRLs) == 0) {
		t.Errorf("%d CRLs with CRLFile %q", len(m.CRLs), f.CRLFile)
	}
}
