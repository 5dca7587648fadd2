package tlsconf

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/spacegate/spacegate/internal/atomicfile"
	"github.com/spacegate/spacegate/internal/safefile"
)

// Default validity periods.
const (
	defaultCAValidity  = 10 * 365 * 24 * time.Hour
	defaultCRLValidity = 7 * 24 * time.Hour
	// backdate is how far before now a certificate starts, so that a
	// verifier whose clock is a little behind accepts it at once.
	backdate   = 5 * time.Minute
	caBackdate = time.Hour
)

// KeyType names a key algorithm and size for a new CA or certificate. The
// zero KeyType means KeyECDSAP256.
type KeyType string

// Key types.
const (
	KeyECDSAP256 KeyType = "ecdsa-p256" // the default: small and fast to verify
	KeyRSA2048   KeyType = "rsa-2048"   // for clients that cannot use ECDSA
	KeyRSA1024   KeyType = "rsa-1024"   // too weak for use; exists to test refusal of weak keys
)

// generate returns a new private key of type k.
func (k KeyType) generate() (crypto.Signer, error) {
	switch k {
	case "", KeyECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyRSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case KeyRSA1024:
		return rsa.GenerateKey(rand.Reader, 1024)
	}
	return nil, fmt.Errorf("unknown key type %q: want %q or %q", string(k), KeyECDSAP256, KeyRSA2048)
}

// CA is a certificate authority that issues server and client certificates
// and signs CRLs. Its methods are safe for concurrent use as long as its
// fields are not modified.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer // private key of Cert
	CertPEM []byte        // Cert as a PEM "CERTIFICATE" block
}

// NewCA creates a self-signed root CA named commonName with a new key of
// keyType. It is valid from an hour ago, to tolerate clock skew, for
// validFor; zero or negative validFor means 10 years.
func NewCA(commonName string, keyType KeyType, validFor time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("creating CA: empty common name")
	}
	if validFor <= 0 {
		validFor = defaultCAValidity
	}
	key, err := keyType.generate()
	if err != nil {
		return nil, fmt.Errorf("creating CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-caBackdate),
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	cert, certPEM, err := sign(tmpl, nil, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating CA: %w", err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM}, nil
}

// LoadCA reads a CA certificate and its private key from PEM files.
func LoadCA(certFile, keyFile string) (*CA, error) {
	var cert *x509.Certificate
	var errs []error
	if data, err := readPEM("CA certificate file", safefile.Certificate, certFile); err != nil {
		errs = append(errs, err)
	} else if blocks, err := decodePEM(data); err != nil {
		errs = append(errs, fmt.Errorf("CA certificate file %q: %w", certFile, err))
	} else if certs, err := parseCertificates(blocks); err != nil {
		errs = append(errs, fmt.Errorf("CA certificate file %q: %w", certFile, err))
	} else if cert = certs[0]; !cert.IsCA {
		errs = append(errs, fmt.Errorf("CA certificate file %q: %s: %w", certFile, cert.Subject, ErrNotCA))
	}
	var key crypto.Signer
	if data, err := readPEM("CA key file", safefile.Key, keyFile); err != nil {
		errs = append(errs, err)
	} else if blocks, err := decodePEM(data); err != nil {
		errs = append(errs, fmt.Errorf("CA key file %q: %w", keyFile, err))
	} else if key, err = parsePrivateKey(blocks); err != nil {
		errs = append(errs, fmt.Errorf("CA key file %q: %w", keyFile, err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if !keyMatches(cert, key) {
		return nil, fmt.Errorf("CA key file %q does not match CA certificate file %q: %w", keyFile, certFile, ErrKeyMismatch)
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: cert.Raw})}, nil
}

// WriteFiles writes the CA certificate to certFile (mode 0644) and its key,
// as PKCS#8 PEM, to keyFile (mode 0600). Each file appears whole or not at
// all. It refuses to overwrite either file: the error then wraps
// [fs.ErrExist] and nothing is written.
func (ca *CA) WriteFiles(certFile, keyFile string) error {
	for _, f := range [...]struct{ what, path string }{{"CA certificate file", certFile}, {"CA key file", keyFile}} {
		if _, err := os.Lstat(f.path); err == nil {
			return fmt.Errorf("refusing to overwrite %s %q: %w", f.what, f.path, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("writing %s: %w", f.what, err)
		}
	}
	keyPEM, err := marshalKeyPEM(ca.Key)
	if err != nil {
		return fmt.Errorf("writing CA key file %q: %w", keyFile, err)
	}
	if err := atomicfile.WriteFileExclusive(keyFile, keyPEM, 0o600); err != nil {
		return fmt.Errorf("writing CA key file %q: %w", keyFile, err)
	}
	if err := atomicfile.WriteFileExclusive(certFile, ca.certPEM(), 0o644); err != nil {
		// A key without its certificate is of no use and would block the
		// next attempt.
		os.Remove(keyFile)
		return fmt.Errorf("writing CA certificate file %q: %w", certFile, err)
	}
	return nil
}

func (ca *CA) certPEM() []byte {
	if len(ca.CertPEM) > 0 {
		return ca.CertPEM
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: ca.Cert.Raw})
}

// IssueRequest describes a certificate to issue. At least a CommonName or
// one subject alternative name is required.
type IssueRequest struct {
	CommonName  string
	DNSNames    []string
	IPAddresses []net.IP // net.IP because crypto/x509 takes it
	URIs        []*url.URL

	// NotBefore is when the certificate becomes valid; zero means five
	// minutes ago. NotAfter is when it expires; zero means NotBefore plus 1
	// year for a server, 5 years for a CA, and 13 months for a client, but
	// never after the issuing CA expires.
	NotBefore, NotAfter time.Time

	// ExtKeyUsage lists the extended key usages. Nil means serverAuth when
	// Server is set, none for a CA, and clientAuth otherwise. An empty
	// non-nil slice leaves the extension out, which verifiers read as any
	// usage.
	ExtKeyUsage []x509.ExtKeyUsage

	Server  bool    // issue a server certificate
	IsCA    bool    // issue an intermediate CA; use Issued.CA to issue from it
	KeyType KeyType // key of the new certificate; zero means KeyECDSAP256
}

// Issued is an issued certificate with its new private key.
type Issued struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte // Cert as a PEM "CERTIFICATE" block
	KeyPEM  []byte // Key as a PKCS#8 PEM "PRIVATE KEY" block
}

// Issue creates a new key and a certificate for it signed by ca, with a
// random 128-bit serial number, a subject key identifier, and the CA's key
// identifier as authority key identifier.
func (ca *CA) Issue(req IssueRequest) (*Issued, error) {
	if req.CommonName == "" && len(req.DNSNames) == 0 && len(req.IPAddresses) == 0 && len(req.URIs) == 0 {
		return nil, errors.New("issuing certificate: no common name or subject alternative name")
	}
	notBefore, notAfter := req.NotBefore, req.NotAfter
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-backdate)
	}
	if notAfter.IsZero() {
		switch {
		case req.IsCA:
			notAfter = notBefore.AddDate(5, 0, 0)
		case req.Server:
			notAfter = notBefore.AddDate(1, 0, 0)
		default:
			notAfter = notBefore.AddDate(0, 13, 0)
		}
		if notAfter.After(ca.Cert.NotAfter) {
			notAfter = ca.Cert.NotAfter
		}
	}
	if notAfter.Before(notBefore) {
		return nil, fmt.Errorf("issuing certificate %q: NotAfter %s is before NotBefore %s",
			req.CommonName, formatTime(notAfter), formatTime(notBefore))
	}
	eku := req.ExtKeyUsage
	if eku == nil {
		switch {
		case req.IsCA:
		case req.Server:
			eku = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		default:
			eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
	}
	key, err := req.KeyType.generate()
	if err != nil {
		return nil, fmt.Errorf("issuing certificate %q: %w", req.CommonName, err)
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := key.(*rsa.PrivateKey); ok && !req.IsCA {
		// TLS 1.2 RSA key exchange encrypts to the server's key.
		usage |= x509.KeyUsageKeyEncipherment
	}
	if req.IsCA {
		usage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: req.CommonName},
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPAddresses,
		URIs:                  req.URIs,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		IsCA:                  req.IsCA,
	}
	cert, certPEM, err := sign(tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate %q: %w", req.CommonName, err)
	}
	keyPEM, err := marshalKeyPEM(key)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate %q: %w", req.CommonName, err)
	}
	return &Issued{Cert: cert, Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// PKCS8DER returns the private key as PKCS#8 DER, the form JDBC's
// postgresql.pk8 takes.
func (i *Issued) PKCS8DER() ([]byte, error) {
	return x509.MarshalPKCS8PrivateKey(i.Key)
}

// CA returns i as a CA that can issue certificates, for an intermediate
// issued with IsCA set. It fails if i is not a CA certificate.
func (i *Issued) CA() (*CA, error) {
	if !i.Cert.IsCA {
		return nil, fmt.Errorf("%s: %w", i.Cert.Subject, ErrNotCA)
	}
	return &CA{Cert: i.Cert, Key: i.Key, CertPEM: i.CertPEM}, nil
}

// CRL returns a PEM "X509 CRL" signed by ca that lists revoked. A nil number
// means thisUpdate in Unix seconds, which grows as CRL numbers must; a zero
// thisUpdate means now and a zero nextUpdate thisUpdate plus 7 days.
func (ca *CA) CRL(revoked []x509.RevocationListEntry, number *big.Int, thisUpdate, nextUpdate time.Time) ([]byte, error) {
	if thisUpdate.IsZero() {
		thisUpdate = time.Now()
	}
	if nextUpdate.IsZero() {
		nextUpdate = thisUpdate.Add(defaultCRLValidity)
	}
	if number == nil {
		number = big.NewInt(thisUpdate.Unix())
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		RevokedCertificateEntries: revoked,
		Number:                    number,
		ThisUpdate:                thisUpdate,
		NextUpdate:                nextUpdate,
	}, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("signing CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCRL, Bytes: der}), nil
}

// sign completes tmpl with a serial number and subject key identifier and
// signs it with signer as parent, or self-signs it when parent is nil. It
// returns the parsed certificate and its PEM.
func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, []byte, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	if tmpl.SubjectKeyId, err = subjectKeyID(pub); err != nil {
		return nil, nil, err
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}), nil
}

// randomSerial returns a random positive serial number of up to 128 bits.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generating serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// subjectKeyID returns the key identifier of pub by method 1 of RFC 7093:
// the leftmost 160 bits of the SHA-256 of the subjectPublicKey bits.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("decoding public key: %w", err)
	}
	h := sha256.Sum256(spki.PublicKey.Bytes)
	return h[:20], nil
}
