package tlsconf

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"fmt"
)

// The parsers below take a file's bytes and know nothing of its path, so
// that they can be fuzzed without touching the disk. Their errors name no
// file: Load's helpers prefix the file, as in "CRL file %q: ...".

// parseCertsPEM parses the CERTIFICATE blocks of a PEM file, in order.
func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	blocks, err := decodePEM(data)
	if err != nil {
		return nil, err
	}
	return parseCertificates(blocks)
}

// parseKeyPEM parses the first private key of a PEM file.
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	blocks, err := decodePEM(data)
	if err != nil {
		return nil, err
	}
	return parsePrivateKey(blocks)
}

// parseCAsPEM parses a client CA bundle and returns its certificates in
// file order and a pool of them. Every certificate must be a CA: a leaf
// pasted into the bundle (often the server certificate) would become a
// trust anchor. Old v1 CAs without basic constraints are let through.
func parseCAsPEM(data []byte) ([]*x509.Certificate, *x509.CertPool, error) {
	cas, err := parseCertsPEM(data)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	for i, ca := range cas {
		if ca.BasicConstraintsValid && !ca.IsCA {
			return nil, nil, fmt.Errorf("certificate %d (%s): %w", i+1, ca.Subject, ErrNotCA)
		}
		pool.AddCert(ca)
	}
	return cas, pool, nil
}

// parseCRLs parses a CRL file: every "X509 CRL" block of a PEM file, in
// file order (one per CA of the bundle, as `spacegate ca` writes it), or one
// DER CRL when data holds no PEM BEGIN line. Blocks of other types are
// ignored, but there must be at least one CRL.
func parseCRLs(data []byte) ([]*x509.RevocationList, error) {
	if !bytes.Contains(data, []byte("-----BEGIN ")) {
		crl, err := x509.ParseRevocationList(data)
		if err != nil {
			return nil, fmt.Errorf("want PEM %q blocks or DER: %w", pemCRL, err)
		}
		return []*x509.RevocationList{crl}, nil
	}
	blocks, err := decodePEM(data)
	if err != nil {
		return nil, err
	}
	var crls []*x509.RevocationList
	for _, b := range blocks {
		if b.Type != pemCRL {
			continue
		}
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CRL %d: %w", len(crls)+1, err)
		}
		crls = append(crls, crl)
	}
	if len(crls) == 0 {
		// decodePEM returns a block per BEGIN line, so there is one.
		return nil, fmt.Errorf("no %q PEM block (found %q)", pemCRL, blocks[0].Type)
	}
	return crls, nil
}
