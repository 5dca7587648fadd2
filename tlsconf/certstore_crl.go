package tlsconf

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"slices"
	"time"

	"github.com/spacegate/spacegate/internal/atomicfile"
	"github.com/spacegate/spacegate/internal/safefile"
)

// Revoke marks client certificate id revoked and signs again the CRL of
// the CA that issued it, with the next CRL number; the CRLs of the other
// CAs are left as they are. Revoking a certificate twice is an error
// wrapping [ErrAlreadyRevoked]. A certificate whose CA is no longer in the
// bundle (pruned) is only marked: the gate refuses it as untrusted anyway.
func (s *CertStore) Revoke(ctx context.Context, id string) (*ClientCert, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	cc, err := s.Get(id)
	if err != nil {
		return nil, err
	}
	if !cc.RevokedAt.IsZero() {
		return cc, fmt.Errorf("certificate %s was revoked at %s: %w", cc.ID, formatTime(cc.RevokedAt), ErrAlreadyRevoked)
	}
	ca, err := s.CA()
	if err != nil {
		return nil, err
	}
	bundle, err := s.Bundle()
	if err != nil {
		return nil, err
	}
	// Find the issuer's key before marking anything, so that a revocation
	// is never recorded without the CRL that makes it take effect.
	var issuer *x509.Certificate
	for _, c := range bundle {
		if cc.IssuedBy(c) {
			if _, err := s.signerOf(c, ca); err != nil {
				return nil, fmt.Errorf("revoking certificate %s: %w", cc.ID, err)
			}
			issuer = c
			break
		}
	}
	cc.RevokedAt = s.now().UTC().Truncate(time.Second)
	if err := s.writeMeta(cc); err != nil {
		return nil, err
	}
	if issuer == nil {
		return cc, nil
	}
	return cc, s.writeCRLs(ca, func(c *x509.Certificate, _ *x509.RevocationList) bool { return c.Equal(issuer) })
}

// RenewOptions select the certificates [CertStore.Renew] replaces.
type RenewOptions struct {
	// Filter, if not nil, limits renewal to the certificates it returns
	// true for.
	Filter func(*ClientCert) bool
	// TrustDomain is the host of the new certificates' URI SANs; "" means
	// DefaultTrustDomain.
	TrustDomain string
}

// Renewal is one certificate replaced by [CertStore.Renew].
type Renewal struct {
	Old, New *ClientCert
}

// Renew creates a replacement for every client certificate that expires
// within RenewBefore (or has expired) and has no replacement yet, skipping
// revoked ones. The replacement has the same name and routes, a new id and
// key, and the full 13-month validity; the old certificate stays valid until
// it expires, so clients can switch at their own pace. Renew also signs the
// CRL again when it is past half of its validity, so a daily run keeps it
// fresh for verifiers that check NextUpdate.
func (s *CertStore) Renew(ctx context.Context, opts RenewOptions) ([]Renewal, error) {
	ca, unlock, err := s.lockCA(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	certs, err := s.List()
	if err != nil {
		return nil, err
	}
	now := s.now()
	var done []Renewal
	for _, old := range certs {
		st := old.Status(now)
		if (st != StatusExpiring && st != StatusExpired) || old.ReplacedBy != "" {
			continue
		}
		if opts.Filter != nil && !opts.Filter(old) {
			continue
		}
		nc, err := s.create(ca, ClientRequest{Routes: old.Routes, Name: old.Name, TrustDomain: opts.TrustDomain}, old.ID)
		if err != nil {
			return done, err
		}
		old.ReplacedBy = nc.ID
		if err := s.writeMeta(old); err != nil {
			return done, err
		}
		done = append(done, Renewal{Old: old, New: nc})
	}
	// Each CA's CRL on its own: those past half of their validity, and
	// those missing.
	stale := func(_ *x509.Certificate, old *x509.RevocationList) bool {
		return old.NextUpdate.Sub(now) < crlValidity/2
	}
	if err := s.writeCRLs(ca, stale); err != nil {
		return done, err
	}
	return done, nil
}

// WriteCRL signs again the CRL of every CA of the bundle whose key the
// store holds (the signing CA's, and retired ones in ca-retired/), each
// with its next number and a new validity, listing the revoked client
// certificates that CA issued. Revoke and Renew call it as needed; it is for
// a CRL file that was lost or that another tool needs fresh.
func (s *CertStore) WriteCRL(ctx context.Context) error {
	ca, unlock, err := s.lockCA(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return s.writeCRLs(ca, resignAll)
}

// storedCRL is a CRL of Dir/ca.crl as read back, with its PEM.
type storedCRL struct {
	crl *x509.RevocationList
	pem []byte
}

// readCRLs parses Dir/ca.crl and returns, parallel to bundle, the CRL each
// CA signed (nil where none). A CRL that no CA of bundle signed is dropped.
// A missing file gives no CRLs and no error.
func (s *CertStore) readCRLs(bundle []*x509.Certificate) ([]*storedCRL, error) {
	out := make([]*storedCRL, len(bundle))
	data, err := safefile.ReadFile(s.CRLFile(), safefile.CRL)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return out, err
	}
	crls, err := parseCRLs(data)
	if err != nil {
		return out, fmt.Errorf("CRL file %q: %w", s.CRLFile(), err)
	}
	for _, crl := range crls {
		for i, ca := range bundle {
			if out[i] == nil && crl.CheckSignatureFrom(ca) == nil {
				out[i] = &storedCRL{crl: crl, pem: pem.EncodeToMemory(&pem.Block{Type: pemCRL, Bytes: crl.Raw})}
			}
		}
	}
	return out, nil
}

// signerOf returns the CA of certificate c with its key: signing when its
// key is c's, else the retired key kept in Dir/ca-retired/. The error
// wraps [fs.ErrNotExist] when the store holds no key for c.
func (s *CertStore) signerOf(c *x509.Certificate, signing *CA) (*CA, error) {
	if keyMatches(c, signing.Key) {
		return &CA{Cert: c, Key: signing.Key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw})}, nil
	}
	path := s.path(retiredDir, retiredName(c)+".key")
	data, err := readPEM("retired CA key file", safefile.Key, path)
	if err != nil {
		return nil, fmt.Errorf("no key for CA %s: %w", c.Subject, err)
	}
	key, err := parseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("retired CA key file %q: %w", path, err)
	}
	if !keyMatches(c, key) {
		return nil, fmt.Errorf("retired CA key file %q does not match CA %s: %w", path, c.Subject, ErrKeyMismatch)
	}
	return &CA{Cert: c, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw})}, nil
}

// writeCRLs writes Dir/ca.crl: one CRL per CA of the bundle, in bundle
// order, each listing the revoked client certificates that CA issued (RFC
// 5280 section 5). A CA's CRL is signed again, with a number one above its
// previous one, when it has none yet or when resign returns true for it;
// otherwise its current CRL is kept byte for byte. A CA whose key the store
// does not hold keeps its current CRL, or goes without one (the gate then
// looks its certificates up in every CRL, and warns). The caller holds the
// lock.
func (s *CertStore) writeCRLs(signing *CA, resign func(ca *x509.Certificate, old *x509.RevocationList) bool) error {
	bundle, err := s.Bundle()
	if err != nil {
		return err
	}
	return s.writeCRLsFor(bundle, signing, resign)
}

// writeCRLsFor is writeCRLs for the CAs of bundle, which may differ from
// the bundle on disk: the CRLs of other CAs are dropped.
func (s *CertStore) writeCRLsFor(bundle []*x509.Certificate, signing *CA, resign func(ca *x509.Certificate, old *x509.RevocationList) bool) error {
	certs, err := s.List()
	if err != nil {
		return err
	}
	now := s.now()
	old, readErr := s.readCRLs(bundle)
	var out []byte
	var signed []*x509.Certificate
	for i, ca := range bundle {
		// Two certificates of one key (a CA re-issued with its key) share
		// a CRL: a second one would verify against both.
		if slices.ContainsFunc(signed, func(c *x509.Certificate) bool { return samePublicKey(c, ca) }) {
			continue
		}
		signed = append(signed, ca)
		prev := old[i]
		if prev != nil && !resign(ca, prev.crl) {
			out = append(out, prev.pem...)
			continue
		}
		signer, err := s.signerOf(ca, signing)
		if err != nil {
			if prev != nil {
				out = append(out, prev.pem...)
				continue
			}
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return err
		}
		var entries []x509.RevocationListEntry
		for _, cc := range certs {
			if cc.RevokedAt.IsZero() || !cc.IssuedBy(ca) {
				continue
			}
			serial, ok := new(big.Int).SetString(cc.Serial, 16)
			if !ok {
				return fmt.Errorf("certificate %s: bad serial %q in %s", cc.ID, cc.Serial, metaName)
			}
			entries = append(entries, x509.RevocationListEntry{SerialNumber: serial, RevocationTime: cc.RevokedAt})
		}
		number := big.NewInt(1)
		switch {
		case prev != nil && prev.crl.Number != nil:
			number.Add(prev.crl.Number, number)
		case readErr != nil:
			// An unreadable CRL file: a number from the clock still grows
			// past any number a counter of ours has reached.
			number.SetInt64(now.Unix())
		}
		crl, err := signer.CRL(entries, number, now.Add(-backdate), now.Add(crlValidity))
		if err != nil {
			return err
		}
		out = append(out, crl...)
	}
	if err := atomicfile.WriteFile(s.CRLFile(), out, 0o644); err != nil {
		return fmt.Errorf("writing CRL: %w", err)
	}
	return nil
}

// Choices of writeCRLs' resign: every CA's CRL, or only those missing.
func resignAll(*x509.Certificate, *x509.RevocationList) bool     { return true }
func resignMissing(*x509.Certificate, *x509.RevocationList) bool { return false }

// samePublicKey reports whether a and b certify the same public key.
func samePublicKey(a, b *x509.Certificate) bool {
	pub, ok := a.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(b.PublicKey)
}
