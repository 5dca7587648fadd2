package tlsconf

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"github.com/spacegate/spacegate/internal/safefile"
)

// Files names the PEM files of one TLS setup. CRLFile is optional: "" means
// no revocation list. Files is comparable, so it can key a map of loaded
// [Material].
type Files struct {
	CertFile     string // server certificate, leaf first, then any intermediates
	KeyFile      string // the server certificate's private key, unencrypted
	ClientCAFile string // every CA whose client certificates are trusted
	CRLFile      string // CRLs in PEM ("X509 CRL"), one per CA of ClientCAFile, or one CRL in DER
}

// Material is loaded, validated TLS state. It is immutable once returned by
// [Load] and safe for concurrent use; callers must not modify its fields.
type Material struct {
	// Certificate is the server certificate chain and key, with Leaf set.
	Certificate tls.Certificate

	// CAs holds every CA certificate of the client CA bundle, in file
	// order. During a CA rotation it holds two.
	CAs []*x509.Certificate

	// ClientCAs is a pool of CAs.
	ClientCAs *x509.CertPool

	// CRLs holds the CRLs of the CRL file, in file order, each with the CA
	// that signed it; nil when no CRL file was given. A client
	// certificate's serial is looked up in the CRL of the CA that issued
	// it (see [Material.CAsWithoutCRL] for a CA that has none).
	CRLs []*IssuerCRL

	// crlOf holds, parallel to CAs, the CRL of each CA or nil.
	crlOf []*IssuerCRL

	// cache holds chains Verify accepted. It changes no result, so
	// Material is still immutable as far as its users can tell. Nil (in a
	// Material not made by Load) caches nothing.
	cache *verifyCache
}

// Load reads and validates the files named by f. It reads every file even
// after a failure and returns all problems found, joined with [errors.Join],
// each naming its file. It checks that the key matches the certificate, that
// the client CA file holds at least one certificate and only CA
// certificates, and that each CRL of the CRL file is signed by a CA of the
// bundle, at most one CRL per CA. It does not reject expired certificates or
// a CRL past its NextUpdate: refusing to start would turn a renewal that is
// merely late into an outage.
func Load(f Files) (*Material, error) {
	var errs []error
	cert, err := loadKeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		errs = append(errs, err)
	}
	cas, pool, err := loadCAs(f.ClientCAFile)
	if err != nil {
		errs = append(errs, err)
	}
	var crls, crlOf []*IssuerCRL
	if f.CRLFile != "" {
		if crls, crlOf, err = loadCRLs(f.CRLFile, f.ClientCAFile, cas); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Material{Certificate: cert, CAs: cas, ClientCAs: pool, CRLs: crls, crlOf: crlOf, cache: newVerifyCache()}, nil
}

// readPEM reads the file at path, of at most lim.Max bytes, for
// decoding. what names the file's role in errors ("certificate file").
// Anything but a regular file is refused (see [safefile.ReadFile]).
func readPEM(what string, lim safefile.Limit, path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("%s: %w", what, errNoFile)
	}
	data, err := safefile.ReadFile(path, safefile.Limit{Kind: what, Max: lim.Max})
	if err != nil {
		// The path is already in our message; keep only the cause.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("reading %s %q: %w", what, path, pe.Err)
		}
		return nil, err // it names the file and its role
	}
	return data, nil
}

// loadKeyPair loads the server certificate chain and its key.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	var errs []error
	var certs []*x509.Certificate
	if data, err := readPEM("certificate file", safefile.Certificate, certFile); err != nil {
		errs = append(errs, err)
	} else if certs, err = parseCertsPEM(data); err != nil {
		errs = append(errs, fmt.Errorf("certificate file %q: %w", certFile, err))
	} else if leaf := certs[0]; len(leaf.ExtKeyUsage) > 0 &&
		!slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) &&
		!slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		// A client certificate given as the server's: clients would refuse
		// it with an obscure error, so say it here.
		errs = append(errs, fmt.Errorf("certificate file %q: certificate %q is not valid for server authentication (extended key usage serverAuth missing)",
			certFile, leaf.Subject))
		certs = nil
	}

	var key crypto.Signer
	if data, err := readPEM("key file", safefile.Key, keyFile); err != nil {
		errs = append(errs, err)
	} else if key, err = parseKeyPEM(data); err != nil {
		errs = append(errs, fmt.Errorf("key file %q: %w", keyFile, err))
	}
	if len(errs) > 0 {
		return tls.Certificate{}, errors.Join(errs...)
	}
	if !keyMatches(certs[0], key) {
		return tls.Certificate{}, fmt.Errorf("key file %q does not match certificate file %q: %w", keyFile, certFile, ErrKeyMismatch)
	}
	chain := make([][]byte, len(certs))
	for i, c := range certs {
		chain[i] = c.Raw
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: certs[0]}, nil
}

// loadCAs loads the client CA bundle.
func loadCAs(path string) ([]*x509.Certificate, *x509.CertPool, error) {
	data, err := readPEM("client CA file", safefile.CABundle, path)
	if err != nil {
		return nil, nil, err
	}
	cas, pool, err := parseCAsPEM(data)
	if errors.Is(err, ErrNoCertificates) {
		return nil, nil, fmt.Errorf("%w in client CA file %q", err, path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("client CA file %q: %w", path, err)
	}
	return cas, pool, nil
}

// loadCRLs loads a CRL file and matches each of its CRLs to the CA of cas
// that signed it. With no cas (the bundle failed to load, which is reported
// on its own) the CRLs are only parsed.
func loadCRLs(path, caFile string, cas []*x509.Certificate) ([]*IssuerCRL, []*IssuerCRL, error) {
	data, err := readPEM("CRL file", safefile.CRL, path)
	if err != nil {
		return nil, nil, err
	}
	crls, err := parseCRLs(data)
	if err != nil {
		return nil, nil, fmt.Errorf("CRL file %q: %w", path, err)
	}
	if len(cas) == 0 {
		return nil, nil, nil
	}
	return matchCRLs(crls, cas, path, caFile)
}
