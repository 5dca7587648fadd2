package tlsconf

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Reason says why a client certificate was refused. Its String form is a
// snake_case word safe for metric labels and log fields. The zero Reason is
// ReasonOK.
type Reason uint8

// Reasons. Verify checks them in the order it documents; new reasons are
// added at the end, so that the values of the others never change.
const (
	ReasonOK              Reason = iota // "ok": certificate accepted
	ReasonCertMissing                   // "cert_missing": no certificate presented
	ReasonCertUntrusted                 // "cert_untrusted": not signed by a CA of the bundle (incl. a bad signature or a missing intermediate)
	ReasonCertUsage                     // "cert_usage": chain is fine but the certificate is not for client authentication, or is a CA
	ReasonCertExpired                   // "cert_expired": after NotAfter
	ReasonCertNotYetValid               // "cert_not_yet_valid": before NotBefore
	ReasonCertRevoked                   // "cert_revoked": listed in the CRL, or chains through a listed CA
	ReasonCertWeakKey                   // "cert_weak_key": RSA key under 2048 bits, or an ECDSA curve other than P-256, P-384, P-521
)

// minRSABits is the smallest RSA client key accepted, as NIST SP 800-131A
// and the CA/Browser Forum require.
const minRSABits = 2048

// String returns the reason's snake_case name, or "reason_N" for an unknown
// value.
func (r Reason) String() string {
	switch r {
	case ReasonOK:
		return "ok"
	case ReasonCertMissing:
		return "cert_missing"
	case ReasonCertUntrusted:
		return "cert_untrusted"
	case ReasonCertUsage:
		return "cert_usage"
	case ReasonCertExpired:
		return "cert_expired"
	case ReasonCertNotYetValid:
		return "cert_not_yet_valid"
	case ReasonCertRevoked:
		return "cert_revoked"
	case ReasonCertWeakKey:
		return "cert_weak_key"
	}
	return "reason_" + strconv.Itoa(int(r))
}

// Identity is what a client certificate says about its holder. Verify fills
// it from the leaf certificate. DNSNames shares its backing array with the
// certificate: do not modify it.
type Identity struct {
	Subject    string // RFC 4514 form, e.g. "CN=alice,O=sushi"
	CommonName string
	Serial     string // lowercase hex, as FormatSerial gives it
	NotBefore  time.Time
	NotAfter   time.Time
	DNSNames   []string
	URIs       []string
	Issuer     string // RFC 4514 form of the issuer's subject
}

// VerifyError is a refused client certificate. Its Error text is a sentence
// for the person at the client (a psql user sees it in a FATAL message): it
// names the certificate by serial and dates and holds no file paths or other
// internals. Err holds the underlying error for logs.
type VerifyError struct {
	Reason   Reason
	Identity Identity // of the leaf; zero when Reason is ReasonCertMissing
	Err      error    // underlying cause (often an x509 error); nil for ReasonCertMissing

	// RevokedAt is when the certificate, or a CA certificate it chains
	// through, was revoked; set only when Reason is ReasonCertRevoked.
	RevokedAt time.Time
}

var _ error = (*VerifyError)(nil)

// Error returns a sentence for the end user.
func (e *VerifyError) Error() string {
	id := &e.Identity
	switch e.Reason {
	case ReasonCertMissing:
		// How to present one depends on the client: the caller adds that.
		return "no client certificate was presented; this gate requires a certificate signed by the space CA"
	case ReasonCertUntrusted:
		return fmt.Sprintf("client certificate (serial %s, subject %s) is not signed by the space CA (its issuer is %s)",
			id.Serial, orNone(id.Subject), orNone(id.Issuer))
	case ReasonCertUsage:
		if errors.Is(e.Err, ErrCACertificate) {
			return fmt.Sprintf("client certificate (serial %s, subject %s) is a CA certificate; present a client certificate issued by the CA",
				id.Serial, orNone(id.Subject))
		}
		return fmt.Sprintf("client certificate (serial %s) is not valid for client authentication (extended key usage clientAuth missing)", id.Serial)
	case ReasonCertExpired:
		return fmt.Sprintf("client certificate expired on %s (serial %s); ask for a new one", formatTime(id.NotAfter), id.Serial)
	case ReasonCertNotYetValid:
		return fmt.Sprintf("client certificate is not valid until %s (serial %s); if it was just issued, check the clocks",
			formatTime(id.NotBefore), id.Serial)
	case ReasonCertRevoked:
		what := "was revoked"
		// A revoked intermediate's error wraps ErrRevoked too; only the
		// leaf's is the bare sentinel.
		if e.Err != ErrRevoked {
			what = "was issued by a CA certificate that was revoked"
		}
		if !e.RevokedAt.IsZero() {
			what += " on " + formatTime(e.RevokedAt)
		}
		return fmt.Sprintf("client certificate (serial %s) %s; ask for a new one", id.Serial, what)
	case ReasonCertWeakKey:
		var wk *weakKeyError
		if errors.As(e.Err, &wk) {
			return fmt.Sprintf("client certificate (serial %s) uses %s; %s", id.Serial, wk.key, wk.want)
		}
		return fmt.Sprintf("client certificate (serial %s) uses a weak key; ask for a new one", id.Serial)
	}
	return fmt.Sprintf("client certificate (serial %s) refused (%s)", id.Serial, e.Reason)
}

// Unwrap returns e.Err.
func (e *VerifyError) Unwrap() error { return e.Err }

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// Verify checks a client certificate chain, leaf first as in
// [tls.ConnectionState].PeerCertificates, against m's CA pool and CRL at
// time now. It returns the leaf's Identity, and on refusal a *[VerifyError]
// as well.
//
// The checks run in this order, and the first failure decides the Reason: a
// certificate is present; it chains to a CA of the bundle, through
// intermediates taken from chain[1:], with extended key usage clientAuth (or
// no extended key usage at all, which RFC 5280 reads as any); it is not a CA
// itself; its key is strong enough (RSA of at least 2048 bits, ECDSA on
// P-256, P-384 or P-521, or Ed25519); now is within its validity; neither it
// nor an intermediate of its chain is listed in the CRL of the CA that
// issued it (RFC 5280: a serial number names a certificate only under its
// issuer).
//
// To tell "not signed by us" from "expired", the chain is built at now
// clamped into the leaf's validity, and the leaf's dates are checked against
// now afterwards. So an expired certificate of a foreign CA is untrusted,
// not expired. It follows that an expired certificate whose CA certificate
// was not yet valid when the leaf expired (a CA re-issued with a later
// NotBefore) is reported untrusted too.
//
// Chains that verified are remembered, so a client reconnecting with the
// same certificate costs no signature check; dates and the CRL are checked
// on every call. Verify is safe for concurrent use.
func (m *Material) Verify(chain []*x509.Certificate, now time.Time) (Identity, error) {
	if len(chain) == 0 || chain[0] == nil {
		return Identity{}, &VerifyError{Reason: ReasonCertMissing}
	}
	leaf := chain[0]
	id := identityOf(leaf)
	at := clampTime(now, leaf.NotBefore, leaf.NotAfter)
	key := chainKey(chain)
	chains, ok := m.cache.get(key, at)
	if !ok {
		roots := m.ClientCAs
		if roots == nil {
			// x509 would fall back to the system roots: trust nothing
			// instead.
			roots = x509.NewCertPool()
		}
		opts := x509.VerifyOptions{
			Roots:       roots,
			CurrentTime: at,
			KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if len(chain) > 1 {
			opts.Intermediates = x509.NewCertPool()
			for _, c := range chain[1:] {
				opts.Intermediates.AddCert(c)
			}
		}
		var err error
		if chains, err = leaf.Verify(opts); err != nil {
			return id, &VerifyError{Reason: reasonOf(err), Identity: id, Err: err}
		}
		m.cache.put(key, chains)
	}
	if leaf.IsCA {
		return id, &VerifyError{Reason: ReasonCertUsage, Identity: id, Err: ErrCACertificate}
	}
	// Before the dates: a renewal that kept the key would be refused
	// again, so the key is what to tell the holder first.
	if err := checkKey(leaf.PublicKey); err != nil {
		return id, &VerifyError{Reason: ReasonCertWeakKey, Identity: id, Err: err}
	}
	if now.Before(leaf.NotBefore) {
		return id, &VerifyError{Reason: ReasonCertNotYetValid, Identity: id, Err: x509.CertificateInvalidError{
			Cert: leaf, Reason: x509.Expired,
			Detail: fmt.Sprintf("current time %s is before %s", formatTime(now), formatTime(leaf.NotBefore)),
		}}
	}
	if now.After(leaf.NotAfter) {
		return id, &VerifyError{Reason: ReasonCertExpired, Identity: id, Err: x509.CertificateInvalidError{
			Cert: leaf, Reason: x509.Expired,
			Detail: fmt.Sprintf("current time %s is after %s", formatTime(now), formatTime(leaf.NotAfter)),
		}}
	}
	if len(m.CRLs) > 0 {
		if at, ok := m.revokedLeaf(id.Serial, chains); ok {
			return id, &VerifyError{Reason: ReasonCertRevoked, Identity: id, Err: ErrRevoked, RevokedAt: at}
		}
		if at, err := m.revokedIntermediate(chains); err != nil {
			return id, &VerifyError{Reason: ReasonCertRevoked, Identity: id, Err: err, RevokedAt: at}
		}
	}
	return id, nil
}

// revokedLeaf looks the leaf's serial up in the CRL of its issuer, the
// second certificate of each chain. The leaf is revoked if the CRL of the
// issuer of any chain lists it.
func (m *Material) revokedLeaf(serial string, chains [][]*x509.Certificate) (time.Time, bool) {
	for _, ch := range chains {
		var issuer *x509.Certificate
		if len(ch) > 1 {
			issuer = ch[1]
		}
		if at, ok := m.revokedUnder(issuer, serial); ok {
			return at, true
		}
	}
	return time.Time{}, false
}

// revokedIntermediate returns an error if every chain passes through an
// intermediate CA listed in the CRL of the CA that issued it. Roots are not
// looked up: removing a CA from the bundle is how a root is withdrawn.
func (m *Material) revokedIntermediate(chains [][]*x509.Certificate) (time.Time, error) {
	var first error
	var firstAt time.Time
	for _, ch := range chains {
		clean := true
		for i := 1; i < len(ch)-1; i++ {
			c := ch[i]
			if at, ok := m.revokedUnder(ch[i+1], FormatSerial(c.SerialNumber)); ok {
				if first == nil {
					first = fmt.Errorf("intermediate CA %s (serial %s): %w", c.Subject, FormatSerial(c.SerialNumber), ErrRevoked)
					firstAt = at
				}
				clean = false
				break
			}
		}
		if clean {
			return time.Time{}, nil
		}
	}
	return firstAt, first
}

// weakKeyError is the Err of a [VerifyError] with ReasonCertWeakKey.
type weakKeyError struct {
	key  string // "a 1024-bit RSA key"
	want string // "at least 2048 bits are required"
}

func (e *weakKeyError) Error() string { return e.key + ": " + e.want }

func (e *weakKeyError) Unwrap() error { return ErrWeakKey }

// checkKey refuses a client certificate's public key that is too weak for
// its signature in the handshake to mean anything. crypto/tls itself takes
// RSA keys from 1024 bits and any curve that x509 parses.
func checkKey(pub any) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return &weakKeyError{key: fmt.Sprintf("a %d-bit RSA key", bits),
				want: fmt.Sprintf("at least %d bits are required", minRSABits)}
		}
		return nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		name := "an unknown curve"
		if k.Curve != nil && k.Curve.Params() != nil {
			name = "curve " + k.Curve.Params().Name
		}
		return &weakKeyError{key: "an ECDSA key on " + name, want: "P-256, P-384 or P-521 is required"}
	case ed25519.PublicKey:
		return nil
	}
	// x509 parses DSA and X25519 keys too; neither can sign a TLS
	// handshake, so this is not reached by a client that completed one.
	return &weakKeyError{key: "a key of an unsupported type",
		want: "an ECDSA, Ed25519 or RSA key of at least 2048 bits is required"}
}

// reasonOf maps an error of x509.Certificate.Verify to a Reason.
func reasonOf(err error) Reason {
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage {
		return ReasonCertUsage
	}
	// Everything else (UnknownAuthorityError, which also covers a bad
	// signature or an expired CA; a CA not allowed to sign; an insecure
	// algorithm; a name constraint) means the chain is not one we trust.
	return ReasonCertUntrusted
}

// clampTime returns t moved into [lo, hi].
func clampTime(t, lo, hi time.Time) time.Time {
	if t.Before(lo) {
		return lo
	}
	if t.After(hi) {
		return hi
	}
	return t
}

func identityOf(c *x509.Certificate) Identity {
	id := Identity{
		Subject:    c.Subject.String(),
		CommonName: c.Subject.CommonName,
		Serial:     FormatSerial(c.SerialNumber),
		NotBefore:  c.NotBefore,
		NotAfter:   c.NotAfter,
		DNSNames:   c.DNSNames,
		Issuer:     c.Issuer.String(),
	}
	if len(c.URIs) > 0 {
		id.URIs = make([]string, len(c.URIs))
		for i, u := range c.URIs {
			id.URIs[i] = u.String()
		}
	}
	return id
}
