package tlsconf

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spacegate/spacegate/internal/atomicfile"
	"github.com/spacegate/spacegate/internal/safefile"
)

// CertStatus is the state of an issued client certificate, as `spacegate
// certs list` shows it.
type CertStatus string

// Certificate states.
const (
	StatusReady    CertStatus = "ready"    // valid for more than RenewBefore
	StatusExpiring CertStatus = "expiring" // valid, but expires within RenewBefore
	StatusExpired  CertStatus = "expired"  // past its NotAfter
	StatusRevoked  CertStatus = "revoked"  // listed in the CRL
)

// ClientCert describes a client certificate issued by a [CertStore]. It is
// what clients/ID/meta.json holds.
type ClientCert struct {
	ID          string    `json:"id"`     // a random UUID, also in the URI SANs
	Name        string    `json:"name"`   // the subject common name
	Routes      []string  `json:"routes"` // the routes it was made for
	Serial      string    `json:"serial"` // as FormatSerial gives it
	URIs        []string  `json:"uris"`   // URI SANs, one per route
	Issuer      string    `json:"issuer"` // subject of the issuing CA
	IssuerKeyID string    `json:"issuer_key_id"`
	CreatedAt   time.Time `json:"created_at"`
	ExpiresAt   time.Time `json:"expires_at"` // the certificate's NotAfter
	RevokedAt   time.Time `json:"revoked_at,omitzero"`
	Replaces    string    `json:"replaces,omitempty"`    // id of the certificate this one renews
	ReplacedBy  string    `json:"replaced_by,omitempty"` // id of the certificate that renews this one
}

// Status returns the state of c at now.
func (c *ClientCert) Status(now time.Time) CertStatus {
	switch {
	case !c.RevokedAt.IsZero():
		return StatusRevoked
	case !now.Before(c.ExpiresAt):
		return StatusExpired
	case c.ExpiresAt.Sub(now) <= RenewBefore:
		return StatusExpiring
	}
	return StatusReady
}

// IssuedBy reports whether ca issued c: by the key id recorded at
// creation, or by the issuer's name for a record without one.
func (c *ClientCert) IssuedBy(ca *x509.Certificate) bool {
	if c.IssuerKeyID != "" && len(ca.SubjectKeyId) > 0 {
		return c.IssuerKeyID == hex.EncodeToString(ca.SubjectKeyId)
	}
	return c.Issuer == ca.Subject.String()
}

// HasRoute reports whether c was made for route.
func (c *ClientCert) HasRoute(route string) bool { return slices.Contains(c.Routes, route) }

// ClientRequest describes a client certificate to create.
type ClientRequest struct {
	// Routes are the routes the certificate is for; at least one. The
	// certificate gets one URI SAN per route,
	// spiffe://TRUST_DOMAIN/route/ROUTE/client/ID, which a route without
	// allowed_clients accepts by default, and other routes refuse.
	Routes []string

	// Name is the subject common name; "" means "ROUTES[0]-client".
	Name string

	// TrustDomain is the host of the URI SANs; "" means DefaultTrustDomain.
	TrustDomain string

	// ValidFor is the certificate's lifetime from now. Zero means 13 months
	// (NotAfter is now.AddDate(0, 13, 0)). NotAfter never passes the
	// signing CA's.
	ValidFor time.Duration

	// KeyType is the certificate's key; zero means KeyECDSAP256.
	KeyType KeyType
}

// Create issues a client certificate from the signing CA (ExtKeyUsage
// clientAuth) and keeps it under Dir/clients/ID/.
func (s *CertStore) Create(ctx context.Context, req ClientRequest) (*ClientCert, error) {
	ca, unlock, err := s.lockCA(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.create(ca, req, "")
}

// create issues and writes a client certificate; the caller holds the lock.
func (s *CertStore) create(ca *CA, req ClientRequest, replaces string) (*ClientCert, error) {
	if len(req.Routes) == 0 {
		return nil, errors.New("creating client certificate: no route")
	}
	if req.Name == "" {
		req.Name = req.Routes[0] + "-client"
	}
	if req.TrustDomain == "" {
		req.TrustDomain = DefaultTrustDomain
	}
	id, err := newID()
	if err != nil {
		return nil, err
	}
	now := s.now()
	notAfter := now.AddDate(0, 13, 0)
	if req.ValidFor > 0 {
		notAfter = now.Add(req.ValidFor)
	}
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	ir := IssueRequest{
		CommonName: req.Name,
		NotBefore:  now.Add(-backdate),
		NotAfter:   notAfter,
		KeyType:    req.KeyType,
	}
	var uris []string
	for _, r := range req.Routes {
		raw := RouteURI(req.TrustDomain, r, id)
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("creating client certificate: route %q gives a bad URI %q: %w", r, raw, err)
		}
		ir.URIs = append(ir.URIs, u)
		uris = append(uris, raw)
	}
	iss, err := ca.Issue(ir)
	if err != nil {
		return nil, err
	}
	cc := &ClientCert{
		ID:          id,
		Name:        req.Name,
		Routes:      slices.Clone(req.Routes),
		Serial:      FormatSerial(iss.Cert.SerialNumber),
		URIs:        uris,
		Issuer:      ca.Cert.Subject.String(),
		IssuerKeyID: hex.EncodeToString(ca.Cert.SubjectKeyId),
		CreatedAt:   now.UTC(), // to the nanosecond, so that List keeps the order of creation
		ExpiresAt:   iss.Cert.NotAfter.UTC(),
		Replaces:    replaces,
	}
	dir := s.path(clientsDir, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating client certificate: %w", err)
	}
	certFile, keyFile := s.ClientFiles(id)
	if err := atomicfile.WriteFile(keyFile, iss.KeyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("creating client certificate: %w", err)
	}
	if err := atomicfile.WriteFile(certFile, append(slices.Clone(iss.CertPEM), ca.CertPEM...), 0o644); err != nil {
		return nil, fmt.Errorf("creating client certificate: %w", err)
	}
	// meta.json last: a directory without it is an interrupted create,
	// which List skips.
	if err := s.writeMeta(cc); err != nil {
		return nil, err
	}
	return cc, nil
}

// newID returns a random (version 4) UUID.
func newID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating id: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

var idPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// checkID makes sure id is a UUID, so that it can never name a path outside
// Dir/clients.
func checkID(id string) (string, error) {
	lower := strings.ToLower(id)
	if !idPattern.MatchString(lower) {
		return "", fmt.Errorf("certificate id %q is not a UUID such as 61acf66f-e505-452c-a517-e727689fb54f: %w", id, ErrCertNotFound)
	}
	return lower, nil
}

func (s *CertStore) writeMeta(cc *ClientCert) error {
	data, err := json.MarshalIndent(cc, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(s.path(clientsDir, cc.ID, metaName), append(data, '\n'), 0o644)
}

// Get returns the client certificate with id, or an error wrapping
// [ErrCertNotFound].
func (s *CertStore) Get(id string) (*ClientCert, error) {
	id, err := checkID(id)
	if err != nil {
		return nil, err
	}
	data, err := safefile.ReadFile(s.path(clientsDir, id, metaName), safefile.ClientRecord)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("certificate %s: %w", id, ErrCertNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading certificate %s: %w", id, err)
	}
	var cc ClientCert
	if err := json.Unmarshal(data, &cc); err != nil {
		return nil, fmt.Errorf("reading %s: %w", s.path(clientsDir, id, metaName), err)
	}
	return &cc, nil
}

// List returns every client certificate, oldest first. No certificates is
// not an error.
func (s *CertStore) List() ([]*ClientCert, error) {
	entries, err := os.ReadDir(s.path(clientsDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing client certificates: %w", err)
	}
	var certs []*ClientCert
	for _, e := range entries {
		if !e.IsDir() || !idPattern.MatchString(e.Name()) {
			continue
		}
		cc, err := s.Get(e.Name())
		if errors.Is(err, ErrCertNotFound) {
			continue // an interrupted create
		}
		if err != nil {
			return nil, err
		}
		certs = append(certs, cc)
	}
	slices.SortFunc(certs, func(a, b *ClientCert) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return certs, nil
}

// ClientBundle is an issued client certificate as a client needs it.
type ClientBundle struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	ChainPEM []byte // the certificate, then its issuing CA: what libpq's sslcert takes
	KeyPEM   []byte // the key as PKCS#8 PEM: what libpq's sslkey takes
}

// PKCS8DER returns the key as PKCS#8 DER, the form JDBC's postgresql.pk8
// takes.
func (b *ClientBundle) PKCS8DER() ([]byte, error) {
	return x509.MarshalPKCS8PrivateKey(b.Key)
}

// ReadClient reads the certificate and key of client certificate id.
func (s *CertStore) ReadClient(id string) (*ClientBundle, error) {
	id, err := checkID(id)
	if err != nil {
		return nil, err
	}
	certFile, keyFile := s.ClientFiles(id)
	chain, err := readPEM("certificate file", safefile.Certificate, certFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("certificate %s: %w", id, ErrCertNotFound)
	}
	if err != nil {
		return nil, err
	}
	blocks, err := decodePEM(chain)
	if err != nil {
		return nil, fmt.Errorf("certificate file %q: %w", certFile, err)
	}
	certs, err := parseCertificates(blocks)
	if err != nil {
		return nil, fmt.Errorf("certificate file %q: %w", certFile, err)
	}
	keyData, err := readPEM("key file", safefile.Key, keyFile)
	if err != nil {
		return nil, err
	}
	if blocks, err = decodePEM(keyData); err != nil {
		return nil, fmt.Errorf("key file %q: %w", keyFile, err)
	}
	key, err := parsePrivateKey(blocks)
	if err != nil {
		return nil, fmt.Errorf("key file %q: %w", keyFile, err)
	}
	if !keyMatches(certs[0], key) {
		return nil, fmt.Errorf("key file %q does not match certificate file %q: %w", keyFile, certFile, ErrKeyMismatch)
	}
	keyPEM, err := marshalKeyPEM(key)
	if err != nil {
		return nil, err
	}
	return &ClientBundle{Cert: certs[0], Key: key, ChainPEM: chain, KeyPEM: keyPEM}, nil
}
