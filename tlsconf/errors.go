package tlsconf

import "errors"

// Errors returned, wrapped with context, by this package. Test for them with
// [errors.Is].
var (
	// ErrIncompletePEM means a file holds a PEM BEGIN line that does not
	// start a well-formed block, which is what a file caught mid-write looks
	// like.
	ErrIncompletePEM = errors.New("incomplete or corrupt PEM block")

	// ErrNoCertificates means a file holds no PEM CERTIFICATE block.
	ErrNoCertificates = errors.New("no PEM certificates")

	// ErrNoPrivateKey means a key file holds no PEM private key block.
	ErrNoPrivateKey = errors.New("no PEM private key")

	// ErrEncryptedKey means a key file holds a passphrase-protected key,
	// which spacegate cannot use.
	ErrEncryptedKey = errors.New("private key is encrypted; spacegate needs an unencrypted key")

	// ErrKeyMismatch means a private key is not the key of the certificate
	// it was given with.
	ErrKeyMismatch = errors.New("private key does not match the certificate's public key")

	// ErrNotCA means a certificate used as a CA is marked as not a CA
	// (basic constraints CA:FALSE).
	ErrNotCA = errors.New("certificate is not a CA certificate")

	// ErrCRLNotSigned means a CRL names a CA of the client CA bundle as
	// its issuer but its signature does not verify against that CA.
	ErrCRLNotSigned = errors.New("CRL signature does not verify")

	// ErrCRLUnknownIssuer means a CRL is signed by no CA of the client CA
	// bundle.
	ErrCRLUnknownIssuer = errors.New("CRL issuer is not a CA of the client CA bundle")

	// ErrCRLDuplicate means a CRL file holds two CRLs of one CA.
	ErrCRLDuplicate = errors.New("more than one CRL for a CA; keep one CRL per CA")

	// ErrTLSVersion means a TLS version is not one spacegate accepts.
	ErrTLSVersion = errors.New("unsupported TLS version")

	// ErrCACertificate is the Err of a [VerifyError] whose client
	// certificate is itself a CA certificate.
	ErrCACertificate = errors.New("client certificate is a CA certificate")

	// ErrRevoked is the Err of a [VerifyError] whose client certificate's
	// serial number is listed in the CRL of its issuer.
	ErrRevoked = errors.New("certificate serial number is listed in the CRL")

	// ErrWeakKey is matched by the Err of a [VerifyError] whose client
	// certificate has an RSA key under 2048 bits or an ECDSA key on a curve
	// other than P-256, P-384 or P-521.
	ErrWeakKey = errors.New("client certificate key is too weak")

	// errNoFile is returned for a required file name that was left empty.
	errNoFile = errors.New("no file name given")
)
