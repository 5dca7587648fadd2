package tlsconf

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// An IssuerCRL is one CRL of the CRL file with the CA of the client CA
// bundle that signed it. RFC 5280 (section 5) has each CA publish the CRL
// of the certificates it issued, so a serial number means something only
// under its issuer: a certificate is looked up in the CRL of the CA that
// issued it, never in another CA's.
type IssuerCRL struct {
	// CA is the certificate of the bundle that signed CRL. When several
	// certificates of the bundle share the CRL's key (a CA re-issued with
	// the same key), it is the first of them in bundle order, and the CRL
	// covers the certificates of each of them.
	CA *x509.Certificate

	// CRL is the parsed revocation list.
	CRL *x509.RevocationList

	// revoked maps FormatSerial of each entry to its revocation time, so
	// that Verify looks a serial up without walking the list.
	revoked map[string]time.Time
}

func newIssuerCRL(ca *x509.Certificate, crl *x509.RevocationList) *IssuerCRL {
	ic := &IssuerCRL{CA: ca, CRL: crl}
	if len(crl.RevokedCertificateEntries) > 0 {
		ic.revoked = make(map[string]time.Time, len(crl.RevokedCertificateEntries))
		for _, e := range crl.RevokedCertificateEntries {
			ic.revoked[FormatSerial(e.SerialNumber)] = e.RevocationTime
		}
	}
	return ic
}

// CRLInfo describes a CRL in force, as the admin API and metrics show it:
// replicas that serve the same revocations show the same issuers and
// numbers.
type CRLInfo struct {
	Issuer      string    `json:"issuer"`                  // RFC 4514 subject of the CA that signed the CRL
	IssuerKeyID string    `json:"issuer_key_id,omitempty"` // that CA's subject key identifier, lowercase hex
	Number      string    `json:"number"`                  // the CRL number in decimal; "" if the CRL has none
	ThisUpdate  time.Time `json:"this_update"`
	NextUpdate  time.Time `json:"next_update,omitzero"` // zero if the CRL names none
	Revoked     int       `json:"revoked"`              // how many serial numbers it lists
}

// CRLInfo returns a description of each CRL of m, in the order of the CRL
// file; nil without a CRL file. The caller owns the returned slice.
func (m *Material) CRLInfo() []CRLInfo {
	var out []CRLInfo
	for _, ic := range m.CRLs {
		info := CRLInfo{
			Issuer:      ic.CA.Subject.String(),
			IssuerKeyID: hex.EncodeToString(ic.CA.SubjectKeyId),
			ThisUpdate:  ic.CRL.ThisUpdate,
			NextUpdate:  ic.CRL.NextUpdate,
			Revoked:     len(ic.CRL.RevokedCertificateEntries),
		}
		if ic.CRL.Number != nil {
			info.Number = ic.CRL.Number.String()
		}
		out = append(out, info)
	}
	return out
}

// CAsWithoutCRL returns the CAs of the bundle for which the CRL file holds
// no CRL, in bundle order; nil when there is no CRL file or every CA has
// one. A certificate issued by such a CA is looked up in every CRL of the
// file, by serial alone, as spacegate did before CRLs per issuer: a CRL file
// written before then (one CRL signed by the newest CA, listing the revoked
// certificates of every CA) thus keeps revoking what it lists. `spacegate
// ca` writes a CRL for every CA of the bundle, so this is a hand-made setup
// or an old file, and the proxy warns of it.
func (m *Material) CAsWithoutCRL() []*x509.Certificate {
	if len(m.CRLs) == 0 {
		return nil
	}
	var out []*x509.Certificate
	for i, ca := range m.CAs {
		if i >= len(m.crlOf) || m.crlOf[i] == nil {
			out = append(out, ca)
		}
	}
	return out
}

// matchCRLs finds for each CRL the CAs of cas that signed it. It returns
// the CRLs in file order and, parallel to cas, the CRL of each CA (nil for
// a CA without one). A CRL that no CA of the bundle signed, and two CRLs of
// one CA, are errors naming path and caFile.
func matchCRLs(crls []*x509.RevocationList, cas []*x509.Certificate, path, caFile string) ([]*IssuerCRL, []*IssuerCRL, error) {
	out := make([]*IssuerCRL, 0, len(crls))
	crlOf := make([]*IssuerCRL, len(cas))
	index := make([]int, len(cas)) // 1-based number in the file of crlOf[i]
	var errs []error
	for n, crl := range crls {
		var named *x509.Certificate
		var sigErr error
		var ic *IssuerCRL
		for i, ca := range cas {
			err := crl.CheckSignatureFrom(ca)
			if bytes.Equal(crl.RawIssuer, ca.RawSubject) && named == nil {
				named, sigErr = ca, err
			}
			if err != nil {
				continue
			}
			if ic == nil {
				ic = newIssuerCRL(ca, crl)
				out = append(out, ic)
			}
			if crlOf[i] != nil {
				errs = append(errs, fmt.Errorf("CRL file %q: CRLs %d and %d are both signed by %s: %w",
					path, index[i], n+1, ca.Subject, ErrCRLDuplicate))
				continue
			}
			crlOf[i], index[i] = ic, n+1
		}
		switch {
		case ic != nil:
		case named != nil:
			errs = append(errs, fmt.Errorf("CRL file %q: CRL %d (issuer %s) does not verify against that CA of client CA file %q: %w: %w",
				path, n+1, crl.Issuer, caFile, ErrCRLNotSigned, sigErr))
		default:
			errs = append(errs, fmt.Errorf("CRL file %q: CRL %d (issuer %s) is signed by no CA of client CA file %q: %w",
				path, n+1, crl.Issuer, caFile, ErrCRLUnknownIssuer))
		}
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	return out, crlOf, nil
}

// revokedUnder looks serial up in the CRL of issuer, the certificate that
// signed it. When issuer has no CRL of its own (it is not in the bundle, or
// the file holds none for it), serial is looked up in every CRL: a false
// match refuses a certificate where a missed one would admit it. See
// [Material.CAsWithoutCRL].
func (m *Material) revokedUnder(issuer *x509.Certificate, serial string) (time.Time, bool) {
	if ic := m.crlFor(issuer); ic != nil {
		at, ok := ic.revoked[serial]
		return at, ok
	}
	for _, ic := range m.CRLs {
		if at, ok := ic.revoked[serial]; ok {
			return at, true
		}
	}
	return time.Time{}, false
}

// crlFor returns the CRL of issuer, or nil if it has none.
func (m *Material) crlFor(issuer *x509.Certificate) *IssuerCRL {
	if issuer == nil {
		return nil
	}
	for i, ca := range m.CAs {
		// x509 returns the pool's own certificates in chains, so the
		// pointer almost always matches; the bytes make sure.
		if ca == issuer || bytes.Equal(ca.Raw, issuer.Raw) {
			if i < len(m.crlOf) {
				return m.crlOf[i]
			}
			return nil
		}
	}
	return nil
}
