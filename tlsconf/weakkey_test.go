package tlsconf

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"
)

// issueWithKey returns a client certificate for pub, CN=cn, signed by ca,
// for key types that CA.Issue does not make.
func issueWithKey(t *testing.T, ca *CA, cn string, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		t.Fatalf("issuing %s: %v", cn, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestVerifyWeakKey(t *testing.T) {
	now := time.Now()
	p := newTestPKI(t)
	foreign := newTestCA(t, "foreign CA")
	m := p.load(t, nil)

	ecKey := func(c elliptic.Curve) crypto.PublicKey {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k.Public()
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024 := mustIssue(t, p.ca, IssueRequest{CommonName: "weak", KeyType: KeyRSA1024})
	rsa2048 := mustIssue(t, p.ca, IssueRequest{CommonName: "strong", KeyType: KeyRSA2048})
	rsa1024Expired := mustIssue(t, p.ca, IssueRequest{CommonName: "weak and old", KeyType: KeyRSA1024,
		NotBefore: now.Add(-30 * time.Minute), NotAfter: now.Add(-10 * time.Minute)})
	rsa1024Foreign := mustIssue(t, foreign, IssueRequest{CommonName: "weak stranger", KeyType: KeyRSA1024})
	rsa1024CA := mustIssue(t, p.ca, IssueRequest{CommonName: "weak intermediate", IsCA: true, KeyType: KeyRSA1024})
	p224 := issueWithKey(t, p.ca, "p224", ecKey(elliptic.P224()))

	serial := func(c *x509.Certificate) string { return FormatSerial(c.SerialNumber) }
	tests := []struct {
		name     string
		cert     *x509.Certificate
		want     Reason
		wantText []string
	}{
		{"RSA 1024", rsa1024.Cert, ReasonCertWeakKey,
			[]string{serial(rsa1024.Cert), "uses a 1024-bit RSA key; at least 2048 bits are required"}},
		{"ECDSA P-224", p224, ReasonCertWeakKey,
			[]string{serial(p224), "uses an ECDSA key on curve P-224; P-256, P-384 or P-521 is required"}},
		{"RSA 1024 and expired: the key is named first", rsa1024Expired.Cert, ReasonCertWeakKey,
			[]string{"1024-bit RSA key"}},
		{"RSA 1024 of another CA is untrusted", rsa1024Foreign.Cert, ReasonCertUntrusted,
			[]string{"not signed by the space CA"}},
		{"RSA 1024 CA certificate is a CA first", rsa1024CA.Cert, ReasonCertUsage,
			[]string{"is a CA certificate"}},
		{"RSA 2048", rsa2048.Cert, ReasonOK, nil},
		{"ECDSA P-256", issueWithKey(t, p.ca, "p256", ecKey(elliptic.P256())), ReasonOK, nil},
		{"ECDSA P-384", issueWithKey(t, p.ca, "p384", ecKey(elliptic.P384())), ReasonOK, nil},
		{"ECDSA P-521", issueWithKey(t, p.ca, "p521", ecKey(elliptic.P521())), ReasonOK, nil},
		{"Ed25519", issueWithKey(t, p.ca, "ed25519", edPub), ReasonOK, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The second round is answered from the cache of verified
			// chains: the key must be checked on it too.
			for range 2 {
				checkVerify(t, m, []*x509.Certificate{tt.cert}, now, tt.want, tt.wantText)
			}
		})
	}

	_, err = m.Verify([]*x509.Certificate{rsa1024.Cert}, now)
	if !errors.Is(err, ErrWeakKey) {
		t.Errorf("Verify(RSA 1024) = %v, want an error matching ErrWeakKey", err)
	}
}

func TestCheckKey(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	// A 2047-bit modulus is one bit short; only its length matters here.
	short := &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 2046), E: 65537}
	long := &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 2047), E: 65537}
	tests := []struct {
		name string
		pub  any
		want string // "" for accepted
	}{
		{"RSA 1024", &small.PublicKey, "a 1024-bit RSA key: at least 2048 bits are required"},
		{"RSA 2047", short, "a 2047-bit RSA key: at least 2048 bits are required"},
		{"RSA 2048", long, ""},
		{"ECDSA without a curve", &ecdsa.PublicKey{}, "an ECDSA key on an unknown curve: P-256, P-384 or P-521 is required"},
		{"unknown type", "not a key", "a key of an unsupported type: an ECDSA, Ed25519 or RSA key of at least 2048 bits is required"},
		{"nil", nil, "a key of an unsupported type: an ECDSA, Ed25519 or RSA key of at least 2048 bits is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkKey(tt.pub)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("checkKey = %v, want nil", err)
			case tt.want != "" && (err == nil || err.Error() != tt.want):
				t.Fatalf("checkKey = %v, want %q", err, tt.want)
			case tt.want != "" && !errors.Is(err, ErrWeakKey):
				t.Fatalf("checkKey = %v, does not match ErrWeakKey", err)
			}
		})
	}
	if got := ReasonCertWeakKey.String(); got != "cert_weak_key" {
		t.Errorf("ReasonCertWeakKey.String() = %q, want cert_weak_key", got)
	}
}
