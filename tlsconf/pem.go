package tlsconf

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
)

// PEM block types.
const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"
	pemCRL         = "X509 CRL"
)

// decodePEM returns every PEM block in data. pem.Decode silently skips a BEGIN
// line that starts no well-formed block (no END line, bad base64); here that
// is an error, because it is what a file caught mid-write looks like.
func decodePEM(data []byte) ([]*pem.Block, error) {
	var blocks []*pem.Block
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks = append(blocks, b)
	}
	if begins := bytes.Count(data, []byte("-----BEGIN ")); begins != len(blocks) {
		return nil, fmt.Errorf("%w: %d BEGIN line(s) but %d complete block(s); the file may be truncated or still being written",
			ErrIncompletePEM, begins, len(blocks))
	}
	return blocks, nil
}

// parseCertificates parses the CERTIFICATE blocks among blocks, in order, and
// ignores blocks of other types (a combined cert+key file is common).
func parseCertificates(blocks []*pem.Block) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for _, b := range blocks {
		if b.Type != pemCertificate {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, ErrNoCertificates
	}
	return certs, nil
}

// parsePrivateKey parses the first private key among blocks: PKCS#8
// ("PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY").
// Like crypto/tls, it tries every encoding whatever the block's label says,
// because mislabelled keys are common.
func parsePrivateKey(blocks []*pem.Block) (crypto.Signer, error) {
	for _, b := range blocks {
		if b.Type == "ENCRYPTED PRIVATE KEY" || strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED") {
			return nil, ErrEncryptedKey
		}
		if !strings.HasSuffix(b.Type, pemPrivateKey) {
			continue
		}
		if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("unsupported private key type %T", k)
			}
			return s, nil
		}
		if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
			return k, nil
		}
		if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
			return k, nil
		}
		return nil, fmt.Errorf("%q block is not a PKCS#8, SEC 1 or PKCS#1 private key", b.Type)
	}
	return nil, ErrNoPrivateKey
}

// keyMatches reports whether key is the private key of cert.
func keyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
}

// marshalKeyPEM encodes key as a PKCS#8 "PRIVATE KEY" PEM block.
func marshalKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// FormatSerial returns a certificate serial number as lowercase hex of its
// big-endian bytes, as `openssl x509 -serial` prints it (without colons, in
// lower case). It is the form of [Identity.Serial]. A nil serial gives "".
func FormatSerial(n *big.Int) string {
	switch {
	case n == nil:
		return ""
	case n.Sign() == 0:
		return "00"
	case n.Sign() < 0:
		// Negative serials break RFC 5280 and x509 rejects them by default,
		// but a GODEBUG can let one through; keep it distinct from its
		// absolute value.
		return "-" + hex.EncodeToString(new(big.Int).Neg(n).Bytes())
	}
	return hex.EncodeToString(n.Bytes())
}
