package tlsconf

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"
)

// issueWithSerial issues a client certificate from ca with the given
// serial number, which CA.Issue never lets a caller choose: two CAs that
// happen to pick the same serial is what a CRL per issuer must tell apart.
func issueWithSerial(t *testing.T, ca *CA, cn string, serial *big.Int) *x509.Certificate {
	t.Helper()
	key, err := KeyECDSAP256.generate()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// crlListing returns a PEM CRL signed by ca with number n that lists serials.
func crlListing(t *testing.T, ca *CA, n int64, serials ...*big.Int) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now().Add(-time.Minute)})
	}
	crl, err := ca.CRL(entries, big.NewInt(n), time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return crl
}

func cat(parts ...[]byte) []byte { return slices.Concat(parts...) }

// TestCRLPerIssuer loads CRL files against a bundle of two CAs, A and B,
// and checks which certificates each refuses as revoked.
func TestCRLPerIssuer(t *testing.T) {
	p := newTestPKI(t)
	caA := p.ca
	caB := newTestCA(t, "second CA")
	foreign := newTestCA(t, "foreign CA")
	impostor := newTestCA(t, "second CA") // B's name, another key

	shared := big.NewInt(0x5eed)
	fromA := issueWithSerial(t, caA, "alice", shared)
	fromB := issueWithSerial(t, caB, "bob", shared) // the same serial, another issuer
	otherA := issueWithSerial(t, caA, "carol", big.NewInt(0xa1))
	otherB := issueWithSerial(t, caB, "dave", big.NewInt(0xb1))
	revokedB := big.NewInt(0xb1)

	der := func(pemCRL []byte) []byte {
		b, _ := pem.Decode(pemCRL)
		return b.Bytes
	}

	tests := []struct {
		name     string
		crl      []byte
		wantErrs []error
		wantText []string
		revoked  []*x509.Certificate // refused as revoked; the others of fromA, fromB, otherA, otherB pass
		noCRL    []string            // CAsWithoutCRL, by common name
	}{
		{
			name:    "serial collision across issuers: revoked under A only",
			crl:     cat(crlListing(t, caA, 3, shared), crlListing(t, caB, 7)),
			revoked: []*x509.Certificate{fromA},
		},
		{
			name:    "serial collision across issuers: revoked under B only",
			crl:     cat(crlListing(t, caA, 3), crlListing(t, caB, 7, shared, revokedB)),
			revoked: []*x509.Certificate{fromB, otherB},
		},
		{
			name:    "CRLs in any order",
			crl:     cat(crlListing(t, caB, 7), crlListing(t, caA, 3, shared)),
			revoked: []*x509.Certificate{fromA},
		},
		{
			name:     "CRL from an unknown issuer",
			crl:      cat(crlListing(t, caA, 3), crlListing(t, foreign, 1)),
			wantErrs: []error{ErrCRLUnknownIssuer},
			wantText: []string{"ca.crl", "CRL 2 (issuer CN=foreign CA)", "ca.crt"},
		},
		{
			name:     "bad signature: B's name, another key",
			crl:      cat(crlListing(t, caA, 3), crlListing(t, impostor, 9, otherA.SerialNumber)),
			wantErrs: []error{ErrCRLNotSigned},
			wantText: []string{"CRL 2 (issuer CN=second CA) does not verify"},
		},
		{
			name:     "two CRLs of one CA",
			crl:      cat(crlListing(t, caA, 3), crlListing(t, caA, 4)),
			wantErrs: []error{ErrCRLDuplicate},
			wantText: []string{"CRLs 1 and 2 are both signed by CN=test CA"},
		},
		{
			// No CRL of B: its certificates are looked up in every CRL,
			// as before CRLs per issuer, and it is named for a warning.
			name:    "missing CRL for one CA",
			crl:     crlListing(t, caA, 3, otherA.SerialNumber),
			revoked: []*x509.Certificate{otherA},
			noCRL:   []string{"second CA"},
		},
		{
			// The file `spacegate ca` wrote before CRLs per issuer: one
			// CRL, signed by the newest CA (B), listing revoked
			// certificates of both CAs. Every revocation in it still
			// holds: A has no CRL of its own, so A's certificates are
			// looked up in B's.
			name:    "old single-CRL file signed by the newest CA",
			crl:     crlListing(t, caB, 12, otherA.SerialNumber, revokedB),
			revoked: []*x509.Certificate{otherA, otherB},
			noCRL:   []string{"test CA"},
		},
		{
			name:    "old single-CRL file in DER",
			crl:     der(crlListing(t, caA, 12, otherA.SerialNumber)),
			revoked: []*x509.Certificate{otherA},
			noCRL:   []string{"second CA"},
		},
	}
	all := []*x509.Certificate{fromA, fromB, otherA, otherB}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Load(p.files(t, tt.crl, caA, caB))
			if len(tt.wantErrs) > 0 || len(tt.wantText) > 0 {
				if err == nil {
					t.Fatal("Load succeeded, want an error")
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
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			for _, c := range all {
				want := ReasonOK
				if slices.Contains(tt.revoked, c) {
					want = ReasonCertRevoked
				}
				checkVerify(t, m, []*x509.Certificate{c}, time.Now(), want, nil)
			}
			var noCRL []string
			for _, c := range m.CAsWithoutCRL() {
				noCRL = append(noCRL, c.Subject.CommonName)
			}
			if !slices.Equal(noCRL, tt.noCRL) {
				t.Errorf("CAsWithoutCRL = %q, want %q", noCRL, tt.noCRL)
			}
		})
	}
}

// TestCRLPerIssuerIntermediate: an intermediate is looked up in the CRL of
// the CA that issued it, not in another CA's.
func TestCRLPerIssuerIntermediate(t *testing.T) {
	p := newTestPKI(t)
	other := newTestCA(t, "second CA")
	inter := mustIssue(t, p.ca, IssueRequest{CommonName: "intermediate", IsCA: true})
	interCA, err := inter.CA()
	if err != nil {
		t.Fatal(err)
	}
	leaf := mustIssue(t, interCA, IssueRequest{CommonName: "erin"})
	chain := []*x509.Certificate{leaf.Cert, inter.Cert}

	m := p.load(t, cat(crlListing(t, p.ca, 1), crlListing(t, other, 1, inter.Cert.SerialNumber)), p.ca, other)
	checkVerify(t, m, chain, time.Now(), ReasonOK, nil)
	m = p.load(t, cat(crlListing(t, p.ca, 2, inter.Cert.SerialNumber), crlListing(t, other, 1)), p.ca, other)
	checkVerify(t, m, chain, time.Now(), ReasonCertRevoked, []string{"CA certificate that was revoked"})
}

func TestCRLInfo(t *testing.T) {
	p := newTestPKI(t)
	second := newTestCA(t, "second CA")
	this := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	signed := func(ca *CA, n int64, entries int) []byte {
		var list []x509.RevocationListEntry
		for i := range entries {
			list = append(list, x509.RevocationListEntry{SerialNumber: big.NewInt(int64(i + 1)), RevocationTime: this})
		}
		crl, err := ca.CRL(list, big.NewInt(n), this, this.Add(48*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return crl
	}
	m := p.load(t, cat(signed(second, 7, 0), signed(p.ca, 1<<40, 2)), p.ca, second)
	got := m.CRLInfo()
	want := []CRLInfo{
		{Issuer: "CN=second CA", Number: "7", ThisUpdate: this, NextUpdate: this.Add(48 * time.Hour)},
		{Issuer: "CN=test CA", Number: "1099511627776", ThisUpdate: this, NextUpdate: this.Add(48 * time.Hour), Revoked: 2},
	}
	if len(got) != len(want) {
		t.Fatalf("CRLInfo = %+v, want %+v", got, want)
	}
	for i := range want {
		want[i].IssuerKeyID = got[i].IssuerKeyID
		if got[i].IssuerKeyID == "" || !got[i].ThisUpdate.Equal(want[i].ThisUpdate) || !got[i].NextUpdate.Equal(want[i].NextUpdate) {
			t.Errorf("CRLInfo[%d] = %+v, want %+v with a key id", i, got[i], want[i])
		}
		got[i].ThisUpdate, got[i].NextUpdate = want[i].ThisUpdate, want[i].NextUpdate
		if got[i] != want[i] {
			t.Errorf("CRLInfo[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	if info := p.load(t, nil).CRLInfo(); info != nil {
		t.Errorf("CRLInfo without a CRL file = %+v, want nil", info)
	}
}
