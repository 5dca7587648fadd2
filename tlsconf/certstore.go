package tlsconf

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/spacegate/spacegate/internal/atomicfile"
	"github.com/spacegate/spacegate/internal/safefile"
)

// The files of a [CertStore], relative to its Dir.
const (
	CAFileName   = "ca.crt" // CA bundle: the signing CA first, then older CAs still trusted
	CAKeyName    = "ca.key" // key of the signing CA, mode 0600
	CRLFileName  = "ca.crl" // one CRL per CA of the bundle, each listing the revoked client certificates that CA issued
	AuditLogName = "audit.log"

	ClientCertName = "postgresql.crt" // in clients/ID/: the client certificate, then its issuing CA
	ClientKeyName  = "postgresql.key" // in clients/ID/: its key, PKCS#8 PEM, mode 0600

	clientsDir  = "clients"
	retiredDir  = "ca-retired" // previous signing CAs, certificate and key, by key id
	metaName    = "meta.json"
	lockName    = ".lock"
	crlValidity = 30 * 24 * time.Hour

	// DefaultCAName is the common name of a CA made by InitCA when none is
	// given.
	DefaultCAName = "spacegate space CA"

	// DefaultTrustDomain is the trust domain of client certificates when a
	// ClientRequest names none.
	DefaultTrustDomain = "spacegate"
)

// RenewBefore is how long before it expires a client certificate counts as
// expiring and [CertStore.Renew] replaces it: 75 days, as the managed
// platform does.
const RenewBefore = 75 * 24 * time.Hour

// Errors of [CertStore], wrapped with context. Test for them with
// [errors.Is].
var (
	// ErrNoCA means the store's directory holds no space CA yet.
	ErrNoCA = errors.New("no space CA")

	// ErrCertNotFound means no client certificate has the id asked for.
	ErrCertNotFound = errors.New("no such client certificate")

	// ErrAlreadyRevoked means a client certificate was revoked before.
	ErrAlreadyRevoked = errors.New("certificate already revoked")
)

// CertStore is the space CA and the client certificates it issued, kept as
// plain files in one directory (pki.dir), which a running gate watches:
//
//	ca.crt                    CA bundle: signing CA first, then older CAs still trusted
//	ca.key                    key of the signing CA (0600)
//	ca.crl                    one CRL per CA of ca.crt, each signed by that CA
//	ca-retired/KEYID.{crt,key}  previous signing CAs, kept after a rotation
//	clients/ID/postgresql.crt client certificate, then its issuing CA
//	clients/ID/postgresql.key its key (0600)
//	clients/ID/meta.json      the ClientCert
//	audit.log                 written by the CLI, not by CertStore
//
// Methods that change files take an exclusive lock on Dir/.lock, so that
// concurrent commands are serialised, and write every file atomically. The
// directory and its subdirectories are mode 0700 and keys 0600.
//
// Revocation: ca.crl holds one CRL per CA of the bundle, in bundle order,
// each signed by its own CA (with the key in ca.key or ca-retired/) and
// listing the revoked certificates that CA issued, as RFC 5280 has it. The
// CRL numbers grow per CA: a revocation signs again only the issuing CA's
// CRL. The gate looks a serial up in the CRL of the certificate's issuer
// (see [Material.Verify]); one file keeps its config to one crl_file. A
// rotation ends with [CertStore.PruneCAs].
//
// A CertStore holds no open files or cached state; its methods are safe for
// concurrent use as long as its fields are not changed.
type CertStore struct {
	// Dir is the directory of the store.
	Dir string

	// Now returns the current time, for certificate validity and status.
	// If nil, time.Now is used.
	Now func() time.Time
}

func (s *CertStore) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *CertStore) path(elem ...string) string {
	return filepath.Join(append([]string{s.Dir}, elem...)...)
}

// CAFile returns the path of the CA bundle, Dir/ca.crt.
func (s *CertStore) CAFile() string { return s.path(CAFileName) }

// CAKeyFile returns the path of the signing CA's key, Dir/ca.key.
func (s *CertStore) CAKeyFile() string { return s.path(CAKeyName) }

// CRLFile returns the path of the CRL, Dir/ca.crl.
func (s *CertStore) CRLFile() string { return s.path(CRLFileName) }

// ClientFiles returns the paths of the certificate (with chain) and key of
// client certificate id. It does not check that they exist.
func (s *CertStore) ClientFiles(id string) (certFile, keyFile string) {
	return s.path(clientsDir, id, ClientCertName), s.path(clientsDir, id, ClientKeyName)
}

// lock creates Dir if needed and takes the store's lock.
func (s *CertStore) lock(ctx context.Context) (func() error, error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating PKI directory: %w", err)
	}
	return atomicfile.Lock(ctx, s.path(lockName))
}

// lockCA takes the store's lock and loads the signing CA; the caller
// unlocks once it is done with both.
func (s *CertStore) lockCA(ctx context.Context) (*CA, func() error, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, nil, err
	}
	ca, err := s.CA()
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return ca, unlock, nil
}

// CAOptions describe a new space CA.
type CAOptions struct {
	// CommonName names the CA. "" means DefaultCAName for InitCA, and for
	// RotateCA the current name with a generation suffix (" G2", " G3", ...).
	CommonName string
	// KeyType is the CA's key. Zero means KeyECDSAP256 for InitCA and the
	// current CA's key type for RotateCA.
	KeyType KeyType
	// ValidFor is the CA's lifetime; zero means 10 years.
	ValidFor time.Duration
}

// InitCA creates the space CA: Dir/ca.crt, Dir/ca.key (0600) and an empty
// CRL, Dir/ca.crl, so that a config can name the bundle and the CRL from the
// start. It refuses, with an error wrapping [fs.ErrExist], to replace an
// existing CA certificate or key. Dir is created (0700) if needed.
func (s *CertStore) InitCA(ctx context.Context, opts CAOptions) (*CA, error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	for _, f := range []string{s.CAFile(), s.CAKeyFile()} {
		if _, err := os.Lstat(f); err == nil {
			return nil, fmt.Errorf("refusing to overwrite %s: %w", f, fs.ErrExist)
		}
	}
	if opts.CommonName == "" {
		opts.CommonName = DefaultCAName
	}
	ca, err := NewCA(opts.CommonName, opts.KeyType, opts.ValidFor)
	if err != nil {
		return nil, err
	}
	if err := ca.WriteFiles(s.CAFile(), s.CAKeyFile()); err != nil {
		return nil, err
	}
	if err := s.writeCRLs(ca, resignAll); err != nil {
		return nil, err
	}
	return ca, nil
}

// CA returns the signing CA: the certificate of the bundle that matches
// Dir/ca.key. Without a CA the error wraps [ErrNoCA].
func (s *CertStore) CA() (*CA, error) {
	bundle, err := s.Bundle()
	if err != nil {
		return nil, err
	}
	data, err := readPEM("CA key file", safefile.Key, s.CAKeyFile())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s has a CA bundle but no CA key %s: %w", s.Dir, s.CAKeyFile(), ErrNoCA)
	}
	if err != nil {
		return nil, err
	}
	blocks, err := decodePEM(data)
	if err != nil {
		return nil, fmt.Errorf("CA key file %q: %w", s.CAKeyFile(), err)
	}
	key, err := parsePrivateKey(blocks)
	if err != nil {
		return nil, fmt.Errorf("CA key file %q: %w", s.CAKeyFile(), err)
	}
	// After a rotation interrupted between writing the bundle and the key,
	// the key still matches the previous CA, which then stays the signer.
	for _, c := range bundle {
		if keyMatches(c, key) {
			return &CA{Cert: c, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw})}, nil
		}
	}
	return nil, fmt.Errorf("CA key file %q matches no certificate of %q: %w", s.CAKeyFile(), s.CAFile(), ErrKeyMismatch)
}

// Bundle returns the certificates of Dir/ca.crt, signing CA first. Without
// a bundle the error wraps [ErrNoCA].
func (s *CertStore) Bundle() ([]*x509.Certificate, error) {
	data, err := readPEM("CA certificate file", safefile.Certificate, s.CAFile())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s holds no %s: %w", s.Dir, CAFileName, ErrNoCA)
	}
	if err != nil {
		return nil, err
	}
	blocks, err := decodePEM(data)
	if err != nil {
		return nil, fmt.Errorf("CA certificate file %q: %w", s.CAFile(), err)
	}
	certs, err := parseCertificates(blocks)
	if err != nil {
		return nil, fmt.Errorf("CA certificate file %q: %w", s.CAFile(), err)
	}
	return certs, nil
}

// RotateCA makes a new signing CA without an outage: the new CA goes first
// into the bundle, beside the CAs already there, so that the gate trusts the
// certificates of both; new certificates are signed by the new CA, which
// gets a CRL of its own in the CRL file beside the others. The previous
// signing CA's certificate and key are kept in Dir/ca-retired/, where the
// key goes on signing that CA's CRL. It returns the new CA.
func (s *CertStore) RotateCA(ctx context.Context, opts CAOptions) (*CA, error) {
	old, unlock, err := s.lockCA(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	bundle, err := s.Bundle()
	if err != nil {
		return nil, err
	}
	if opts.CommonName == "" {
		opts.CommonName = nextGeneration(old.Cert.Subject.CommonName)
	}
	if opts.KeyType == "" {
		opts.KeyType = keyTypeOf(old.Key)
	}
	ca, err := NewCA(opts.CommonName, opts.KeyType, opts.ValidFor)
	if err != nil {
		return nil, err
	}
	// Keep the old key before anything changes, so that no step below can
	// lose it.
	if err := os.MkdirAll(s.path(retiredDir), 0o700); err != nil {
		return nil, fmt.Errorf("rotating CA: %w", err)
	}
	name := retiredName(old.Cert)
	oldKey, err := marshalKeyPEM(old.Key)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(s.path(retiredDir, name+".key"), oldKey, 0o600); err != nil {
		return nil, fmt.Errorf("rotating CA: %w", err)
	}
	if err := atomicfile.WriteFile(s.path(retiredDir, name+".crt"), old.CertPEM, 0o644); err != nil {
		return nil, fmt.Errorf("rotating CA: %w", err)
	}
	// Bundle first: the gate then trusts both CAs, and the CRL on disk,
	// signed by the old CA, still verifies against the new bundle.
	pemBundle := slices.Clone(ca.CertPEM)
	for _, c := range bundle {
		pemBundle = append(pemBundle, pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw})...)
	}
	if err := atomicfile.WriteFile(s.CAFile(), pemBundle, 0o644); err != nil {
		return nil, fmt.Errorf("rotating CA: %w", err)
	}
	newKey, err := marshalKeyPEM(ca.Key)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(s.CAKeyFile(), newKey, 0o600); err != nil {
		return nil, fmt.Errorf("rotating CA: %w", err)
	}
	// The new CA's first CRL; the others stay as they are.
	if err := s.writeCRLs(ca, resignMissing); err != nil {
		return nil, err
	}
	return ca, nil
}

// retiredName returns the base name of a retired CA's files in
// Dir/ca-retired/: its key id in hex, or its serial if it has none.
func retiredName(c *x509.Certificate) string {
	if len(c.SubjectKeyId) > 0 {
		return hex.EncodeToString(c.SubjectKeyId)
	}
	return FormatSerial(c.SerialNumber)
}

var generationSuffix = regexp.MustCompile(` G(\d+)$`)

// nextGeneration returns "NAME G2" for "NAME", "NAME G3" for "NAME G2".
func nextGeneration(cn string) string {
	if m := generationSuffix.FindStringSubmatchIndex(cn); m != nil {
		n, _ := strconv.Atoi(cn[m[2]:m[3]])
		return cn[:m[0]] + " G" + strconv.Itoa(n+1)
	}
	return cn + " G2"
}

// keyTypeOf returns the KeyType of key, or the default for a key it does
// not know.
func keyTypeOf(key crypto.Signer) KeyType {
	if k, ok := key.(*rsa.PrivateKey); ok && k.N.BitLen() >= 2048 {
		return KeyRSA2048
	}
	if _, ok := key.(*ecdsa.PrivateKey); ok {
		return KeyECDSAP256
	}
	return ""
}

// IssueServer issues a server certificate signed by the signing CA for
// names (host names, or IP addresses), and writes it to certFile and its key
// to keyFile (0600). The common name is names[0]. It refuses, with an error
// wrapping [fs.ErrExist], to replace either file.
func (s *CertStore) IssueServer(ctx context.Context, names []string, certFile, keyFile string) (*x509.Certificate, error) {
	if len(names) == 0 {
		return nil, errors.New("issuing server certificate: no host name or IP address")
	}
	for _, f := range []string{certFile, keyFile} {
		if _, err := os.Lstat(f); err == nil {
			return nil, fmt.Errorf("refusing to overwrite %s: %w", f, fs.ErrExist)
		}
	}
	ca, unlock, err := s.lockCA(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	req := IssueRequest{CommonName: names[0], Server: true}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			req.IPAddresses = append(req.IPAddresses, ip)
		} else {
			req.DNSNames = append(req.DNSNames, n)
		}
	}
	iss, err := ca.Issue(req)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFileExclusive(keyFile, iss.KeyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("writing server key: %w", err)
	}
	if err := atomicfile.WriteFileExclusive(certFile, iss.CertPEM, 0o644); err != nil {
		os.Remove(keyFile)
		return nil, fmt.Errorf("writing server certificate: %w", err)
	}
	return iss.Cert, nil
}
