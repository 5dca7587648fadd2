package tlsconf

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"time"

	"github.com/spacegate/spacegate/internal/atomicfile"
	"github.com/spacegate/spacegate/internal/safefile"
)

// Revoke marks client certificate id revoked and writes a new CRL that
// lists it. Revoking a certificate twice is an error wrapping
// [ErrAlreadyRevoked].
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
	cc.RevokedAt = s.now().UTC().Truncate(time.Second)
	if err := s.writeMeta(cc); err != nil {
		return nil, err
	}
	if err := s.writeCRL(ca); err != nil {
		return nil, err
	}
	return cc, nil
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
	if crl, err := s.readCRL(); err != nil || crl.NextUpdate.Sub(now) < crlValidity/2 {
		if err := s.writeCRL(ca); err != nil {
			return done, err
		}
	}
	return done, nil
}

// WriteCRL signs the CRL again with the signing CA, with a new number and
// validity, listing every revoked client certificate. Revoke and Renew call
// it as needed; it is for a CRL that was lost or that another tool needs
// fresh.
func (s *CertStore) WriteCRL(ctx context.Context) error {
	ca, unlock, err := s.lockCA(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return s.writeCRL(ca)
}

// readCRL parses Dir/ca.crl.
func (s *CertStore) readCRL() (*x509.RevocationList, error) {
	data, err := safefile.ReadFile(s.CRLFile(), safefile.CRL)
	if err != nil {
		return nil, err
	}
	der := data
	if b, _ := pem.Decode(data); b != nil {
		der = b.Bytes
	}
	return x509.ParseRevocationList(der)
}

// writeCRL signs and writes Dir/ca.crl listing every revoked client
// certificate, with a CRL number one above the current file's. The caller
// holds the lock.
func (s *CertStore) writeCRL(ca *CA) error {
	certs, err := s.List()
	if err != nil {
		return err
	}
	var entries []x509.RevocationListEntry
	for _, cc := range certs {
		if cc.RevokedAt.IsZero() {
			continue
		}
		serial, ok := new(big.Int).SetString(cc.Serial, 16)
		if !ok {
			return fmt.Errorf("certificate %s: bad serial %q in %s", cc.ID, cc.Serial, metaName)
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: serial, RevocationTime: cc.RevokedAt})
	}
	now := s.now()
	number := big.NewInt(1)
	if old, err := s.readCRL(); err == nil && old.Number != nil {
		number.Add(old.Number, number)
	} else if err == nil || !errors.Is(err, fs.ErrNotExist) {
		// An unreadable CRL: a number from the clock still grows past
		// any number a counter of ours has reached.
		number.SetInt64(now.Unix())
	}
	crl, err := ca.CRL(entries, number, now.Add(-backdate), now.Add(crlValidity))
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.CRLFile(), crl, 0o644); err != nil {
		return fmt.Errorf("writing CRL: %w", err)
	}
	return nil
}
