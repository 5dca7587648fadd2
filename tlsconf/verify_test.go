package tlsconf

import (
	"crypto/x509"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestVerify(t *testing.T) {
	now := time.Now()
	p := newTestPKI(t)
	second := newTestCA(t, "second CA")
	foreign := newTestCA(t, "foreign CA")
	inter := mustIssue(t, p.ca, IssueRequest{CommonName: "intermediate", IsCA: true})
	interCA, err := inter.CA()
	if err != nil {
		t.Fatal(err)
	}
	revokedInter := mustIssue(t, p.ca, IssueRequest{CommonName: "revoked intermediate", IsCA: true})
	revokedInterCA, err := revokedInter.CA()
	if err != nil {
		t.Fatal(err)
	}

	uri, _ := url.Parse("spiffe://space/alice")
	good := mustIssue(t, p.ca, IssueRequest{CommonName: "alice", URIs: []*url.URL{uri}})
	// Validity windows start after the CA's, which begins an hour ago.
	expired := mustIssue(t, p.ca, IssueRequest{CommonName: "old", NotBefore: now.Add(-30 * time.Minute), NotAfter: now.Add(-10 * time.Minute)})
	early := mustIssue(t, p.ca, IssueRequest{CommonName: "early", NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)})
	stranger := mustIssue(t, foreign, IssueRequest{CommonName: "mallory"})
	strangerExpired := mustIssue(t, foreign, IssueRequest{CommonName: "mallory", NotBefore: now.Add(-30 * time.Minute), NotAfter: now.Add(-10 * time.Minute)})
	serverOnly := mustIssue(t, p.ca, IssueRequest{CommonName: "bob", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	noEKU := mustIssue(t, p.ca, IssueRequest{CommonName: "carol", ExtKeyUsage: []x509.ExtKeyUsage{}})
	revoked := mustIssue(t, p.ca, IssueRequest{CommonName: "eve"})
	viaInter := mustIssue(t, interCA, IssueRequest{CommonName: "dave"})
	viaRevokedInter := mustIssue(t, revokedInterCA, IssueRequest{CommonName: "frank"})
	fromSecond := mustIssue(t, second, IssueRequest{CommonName: "grace"})

	tamperedDER := append([]byte(nil), good.Cert.Raw...)
	tamperedDER[len(tamperedDER)-3] ^= 0x01 // inside the signature's s value
	tampered, err := x509.ParseCertificate(tamperedDER)
	if err != nil {
		t.Fatalf("parsing tampered certificate: %v", err)
	}

	revokedAt := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := p.load(t, mustCRL(t, p.ca, revokedAt, revoked, revokedInter), p.ca, second)

	serial := func(is *Issued) string { return FormatSerial(is.Cert.SerialNumber) }
	tests := []struct {
		name  string
		chain []*x509.Certificate
		want  Reason
		// wantText must all appear in the error's sentence.
		wantText []string
	}{
		{"good", []*x509.Certificate{good.Cert}, ReasonOK, nil},
		{"no EKU means any", []*x509.Certificate{noEKU.Cert}, ReasonOK, nil},
		{"second CA of bundle", []*x509.Certificate{fromSecond.Cert}, ReasonOK, nil},
		{"via intermediate sent by client", []*x509.Certificate{viaInter.Cert, inter.Cert}, ReasonOK, nil},
		{"no cert", nil, ReasonCertMissing, []string{"no client certificate", "signed by the space CA"}},
		{"nil leaf", []*x509.Certificate{nil}, ReasonCertMissing, []string{"no client certificate"}},
		{"expired", []*x509.Certificate{expired.Cert}, ReasonCertExpired,
			[]string{serial(expired), formatTime(expired.Cert.NotAfter), "expired on"}},
		{"not yet valid", []*x509.Certificate{early.Cert}, ReasonCertNotYetValid,
			[]string{serial(early), formatTime(early.Cert.NotBefore), "not valid until"}},
		{"other CA", []*x509.Certificate{stranger.Cert}, ReasonCertUntrusted,
			[]string{serial(stranger), "CN=mallory", "not signed by the space CA", "CN=foreign CA"}},
		{"other CA and expired", []*x509.Certificate{strangerExpired.Cert}, ReasonCertUntrusted,
			[]string{serial(strangerExpired), "not signed by the space CA"}},
		{"intermediate not sent", []*x509.Certificate{viaInter.Cert}, ReasonCertUntrusted,
			[]string{serial(viaInter), "not signed"}},
		{"bad signature", []*x509.Certificate{tampered}, ReasonCertUntrusted,
			[]string{serial(good), "not signed"}},
		{"no clientAuth EKU", []*x509.Certificate{serverOnly.Cert}, ReasonCertUsage,
			[]string{serial(serverOnly), "clientAuth missing"}},
		{"CA cert as client cert", []*x509.Certificate{p.ca.Cert}, ReasonCertUsage,
			[]string{FormatSerial(p.ca.Cert.SerialNumber), "is a CA certificate"}},
		{"intermediate as client cert", []*x509.Certificate{inter.Cert}, ReasonCertUsage,
			[]string{serial(inter), "is a CA certificate"}},
		{"revoked", []*x509.Certificate{revoked.Cert}, ReasonCertRevoked,
			[]string{serial(revoked), "was revoked on 2026-01-02T03:04:05Z"}},
		{"revoked intermediate", []*x509.Certificate{viaRevokedInter.Cert, revokedInter.Cert}, ReasonCertRevoked,
			[]string{serial(viaRevokedInter), "CA certificate that was revoked on 2026-01-02T03:04:05Z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The second round is answered from the cache of verified
			// chains and must agree with the first.
			for round := range 2 {
				t.Logf("round %d", round)
				checkVerify(t, m, tt.chain, now, tt.want, tt.wantText)
			}
		})
	}
	t.Run("identity", func(t *testing.T) {
		id, err := m.Verify([]*x509.Certificate{good.Cert}, now)
		if err != nil {
			t.Fatal(err)
		}
		want := Identity{
			Subject: "CN=alice", CommonName: "alice", Serial: serial(good),
			NotBefore: good.Cert.NotBefore, NotAfter: good.Cert.NotAfter,
			URIs: []string{"spiffe://space/alice"}, Issuer: "CN=test CA",
		}
		if id.Subject != want.Subject || id.CommonName != want.CommonName || id.Serial != want.Serial ||
			!id.NotBefore.Equal(want.NotBefore) || !id.NotAfter.Equal(want.NotAfter) ||
			len(id.URIs) != 1 || id.URIs[0] != want.URIs[0] || id.Issuer != want.Issuer {
			t.Errorf("Identity = %+v, want %+v", id, want)
		}
	})

	t.Run("without CRL nothing is revoked", func(t *testing.T) {
		m := p.load(t, nil)
		if _, err := m.Verify([]*x509.Certificate{revoked.Cert}, now); err != nil {
			t.Errorf("Verify: %v", err)
		}
	})
}

// checkVerify checks that m.Verify(chain, now) accepts chain when want is
// ReasonOK, and otherwise refuses it for reason want with an Error text
// containing every string of wantText.
func checkVerify(t *testing.T, m *Material, chain []*x509.Certificate, now time.Time, want Reason, wantText []string) {
	t.Helper()
	id, err := m.Verify(chain, now)
	if want == ReasonOK {
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		if id.Serial != FormatSerial(chain[0].SerialNumber) || id.CommonName != chain[0].Subject.CommonName {
			t.Errorf("identity = %+v, want serial and CN of %s", id, chain[0].Subject)
		}
		return
	}
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("Verify error = %v (%T), want *VerifyError", err, err)
	}
	if ve.Reason != want {
		t.Fatalf("Reason = %v, want %v (error: %v; cause: %v)", ve.Reason, want, err, ve.Err)
	}
	msg := err.Error()
	for _, s := range wantText {
		if !strings.Contains(msg, s) {
			t.Errorf("Error() = %q, want it to contain %q", msg, s)
		}
	}
	if strings.Contains(msg, "/") && !strings.Contains(msg, "spiffe") {
		t.Errorf("Error() = %q names a path", msg)
	}
	if want != ReasonCertMissing && id.Serial == "" {
		t.Errorf("identity of refused certificate has no serial")
	}
}

// TestVerifyCacheWindow checks that a chain accepted once is checked again
// when a CA certificate in it has since expired.
func TestVerifyCacheWindow(t *testing.T) {
	now := time.Now()
	p := newTestPKI(t)
	inter := mustIssue(t, p.ca, IssueRequest{CommonName: "short intermediate", IsCA: true, NotAfter: now.Add(time.Hour)})
	interCA, err := inter.CA()
	if err != nil {
		t.Fatal(err)
	}
	leaf := mustIssue(t, interCA, IssueRequest{CommonName: "alice", NotAfter: now.Add(3 * time.Hour)})
	m := p.load(t, nil)
	chain := []*x509.Certificate{leaf.Cert, inter.Cert}
	checkVerify(t, m, chain, now, ReasonOK, nil)
	checkVerify(t, m, chain, now.Add(2*time.Hour), ReasonCertUntrusted, []string{FormatSerial(leaf.Cert.SerialNumber)})
	checkVerify(t, m, chain, now.Add(time.Minute), ReasonOK, nil)
}

func TestReasonString(t *testing.T) {
	tests := []struct {
		r    Reason
		want string
	}{
		{ReasonOK, "ok"},
		{ReasonCertMissing, "cert_missing"},
		{ReasonCertUntrusted, "cert_untrusted"},
		{ReasonCertUsage, "cert_usage"},
		{ReasonCertExpired, "cert_expired"},
		{ReasonCertNotYetValid, "cert_not_yet_valid"},
		{ReasonCertRevoked, "cert_revoked"},
		{Reason(200), "reason_200"},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("Reason(%d).String() = %q, want %q", tt.r, got, tt.want)
		}
	}
}

func TestFormatSerial(t *testing.T) {
	tests := []struct {
		hex  string
		want string
	}{
		{"0", "00"},
		{"1", "01"},
		{"abc", "0abc"},
		{"1f2e3d", "1f2e3d"},
		{"-ff", "-ff"},
	}
	for _, tt := range tests {
		n, _ := new(big.Int).SetString(tt.hex, 16)
		if got := FormatSerial(n); got != tt.want {
			t.Errorf("FormatSerial(0x%s) = %q, want %q", tt.hex, got, tt.want)
		}
	}
	if got := FormatSerial(nil); got != "" {
		t.Errorf("FormatSerial(nil) = %q, want empty", got)
	}
}

// BenchmarkVerify verifies an ECDSA P-256 client certificate issued by the
// root, as on a reconnect (cached) and as on a first connection (uncached).
func BenchmarkVerify(b *testing.B) {
	p := newTestPKI(b)
	client := mustIssue(b, p.ca, IssueRequest{CommonName: "alice"})
	cached := p.load(b, mustCRL(b, p.ca, time.Now(), mustIssue(b, p.ca, IssueRequest{CommonName: "eve"})))
	uncached := &Material{ClientCAs: cached.ClientCAs, CAs: cached.CAs, CRLs: cached.CRLs, crlOf: cached.crlOf}
	chain := []*x509.Certificate{client.Cert}
	now := time.Now()
	for _, bb := range []struct {
		name string
		m    *Material
	}{{"cached", cached}, {"uncached", uncached}} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bb.m.Verify(chain, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
