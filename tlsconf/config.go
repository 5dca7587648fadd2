package tlsconf

import (
	"crypto/tls"
	"fmt"
	"slices"
)

// ParseMinVersion parses a minimum TLS version as written in the config
// file: "1.2" gives [tls.VersionTLS12] and "1.3" gives [tls.VersionTLS13].
// Anything else is an error, including "1.0" and "1.1", which RFC 8996
// deprecates.
func ParseMinVersion(s string) (uint16, error) {
	switch s {
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	case "1.0", "1.1":
		return 0, fmt.Errorf("%w %q: TLS 1.0 and 1.1 are deprecated (RFC 8996); want \"1.2\" or \"1.3\"", ErrTLSVersion, s)
	}
	return 0, fmt.Errorf("%w %q: want \"1.2\" or \"1.3\"", ErrTLSVersion, s)
}

// ServerConfig returns a new server tls.Config that serves m.Certificate.
//
// It requests a client certificate but does not verify it, so that a bad or
// missing certificate still completes the handshake and the caller can
// refuse it with a message the client displays: call [Material.Verify] on
// ConnectionState().PeerCertificates. It sends no list of acceptable CAs
// either: a Go client given such a list withholds a certificate from another
// CA, and the refusal would say "missing" instead of "not signed by the
// space CA".
//
// Session tickets are disabled so that no connection skips verification
// against the CA bundle and CRL of the moment; libpq never resumes anyway.
// TLS 1.2 is offered with the suites of [CipherSuites] only. MinVersion is
// minVersion, raised to TLS 1.2 if lower. NextProtos is a copy of
// nextProtos (nil offers no ALPN). The caller owns the returned config; m
// must not be nil.
func ServerConfig(m *Material, minVersion uint16, nextProtos []string) *tls.Config {
	return &tls.Config{
		Certificates:           []tls.Certificate{m.Certificate},
		ClientAuth:             tls.RequestClientCert,
		SessionTicketsDisabled: true,
		CipherSuites:           CipherSuites(),
		MinVersion:             max(minVersion, tls.VersionTLS12),
		NextProtos:             slices.Clone(nextProtos),
	}
}

// CipherSuites returns the TLS 1.2 cipher suites a server config offers:
// ECDHE key exchange with AES-GCM or ChaCha20-Poly1305, as in Mozilla's
// "intermediate" profile. Go's defaults would add ECDHE with AES-CBC and
// HMAC-SHA1, whose MAC-then-encrypt construction is the ground of the
// Lucky13 attacks and which scanners such as testssl.sh flag; every TLS 1.2
// client that libpq or redis-cli links offers a GCM suite. TLS 1.3 suites
// are not configurable in Go and are all AEAD. The caller owns the
// returned slice.
func CipherSuites() []uint16 {
	return []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	}
}
