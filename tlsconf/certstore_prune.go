package tlsconf

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/spacegate/spacegate/internal/atomicfile"
)

// ErrCAInUse means a retired CA was not pruned because client certificates
// that are neither expired nor revoked chain to it.
var ErrCAInUse = errors.New("retired CA still has live client certificates")

// Pruned is what [CertStore.PruneCAs] did, or would have done.
type Pruned struct {
	// Removed lists the retired CAs taken out of the bundle, in bundle
	// order; none when the prune was refused.
	Removed []*x509.Certificate
	// Kept is the bundle afterwards (or, when refused, as it stays),
	// signing CA first.
	Kept []*x509.Certificate
	// Live lists, per retired CA, the client certificates that are neither
	// expired nor revoked and chain to it: they stop working once the CA
	// is gone.
	Live []LiveCert
	// Forced reports that CAs were removed despite Live.
	Forced bool
}

// LiveCert is a client certificate that still needs a retired CA.
type LiveCert struct {
	CA   *x509.Certificate
	Cert *ClientCert
}

// PruneCAs ends a CA rotation: it removes from the bundle every retired CA
// (every CA but the signing one, and others of its key), and their CRLs
// from the CRL file, once no client certificate of the store that is
// neither expired nor revoked chains to them. Otherwise it changes nothing
// and returns the Pruned, listing the live certificates, with an error
// wrapping [ErrCAInUse]; force removes the CAs anyway, and those
// certificates are then refused by the gate as not signed by the space CA.
// Nothing to prune is not an error.
//
// The CRL file is written before the bundle: a gate that reads the new CRL
// file with the old bundle finds a CA without a CRL (and warns), whereas
// the new bundle with the old CRL file would hold a CRL of an unknown CA,
// which the gate refuses to load. The retired keys stay in ca-retired/.
func (s *CertStore) PruneCAs(ctx context.Context, force bool) (*Pruned, error) {
	signing, unlock, err := s.lockCA(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	bundle, err := s.Bundle()
	if err != nil {
		return nil, err
	}
	certs, err := s.List()
	if err != nil {
		return nil, err
	}
	now := s.now()
	res := &Pruned{}
	for _, ca := range bundle {
		if samePublicKey(ca, signing.Cert) {
			res.Kept = append(res.Kept, ca)
			continue
		}
		res.Removed = append(res.Removed, ca)
		for _, cc := range certs {
			if st := cc.Status(now); st != StatusExpired && st != StatusRevoked && cc.IssuedBy(ca) {
				res.Live = append(res.Live, LiveCert{CA: ca, Cert: cc})
			}
		}
	}
	if len(res.Removed) == 0 {
		return res, nil
	}
	if len(res.Live) > 0 {
		if !force {
			res.Kept, res.Removed = bundle, nil
			return res, fmt.Errorf("%d client certificate(s) that are neither expired nor revoked chain to a retired CA: %w", len(res.Live), ErrCAInUse)
		}
		res.Forced = true
	}
	// The CRLs of the CAs that stay, byte for byte (or signed, for a CA
	// that had none), then the bundle.
	if err := s.writeCRLsFor(res.Kept, signing, resignMissing); err != nil {
		return nil, fmt.Errorf("pruning CAs: %w", err)
	}
	var pemBundle []byte
	for _, ca := range res.Kept {
		pemBundle = append(pemBundle, pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: ca.Raw})...)
	}
	if err := atomicfile.WriteFile(s.CAFile(), pemBundle, 0o644); err != nil {
		return nil, fmt.Errorf("pruning CAs: %w", err)
	}
	return res, nil
}
