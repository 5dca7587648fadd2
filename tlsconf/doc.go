// Package tlsconf holds everything X.509 and TLS for spacegate: loading a
// server certificate, its key, the client CA bundle and an optional CRL
// ([Load]); the server [tls.Config] ([ServerConfig]); checking a client
// certificate chain and saying why it was refused ([Material.Verify]); and the
// space CA that issues server and client certificates ([CA]).
//
// The TLS handshake never fails because of a client certificate. The server
// asks for one with [tls.RequestClientCert], completes the handshake, and the
// proxy then calls [Material.Verify] on the peer chain. A refusal is a
// [*VerifyError] whose Error text is written for the person at the client (a
// psql user sees it in a FATAL message), and whose [Reason] is a short word
// for logs and metric labels. A TLS alert such as "unknown ca" tells that
// person much less.
//
// Session tickets are disabled, so every connection is verified afresh
// against the CA bundle and CRL of the moment: libpq never resumes sessions,
// and CVE-2025-68121 showed that resumption can skip a changed CA.
//
// The package uses only the standard library and keeps no package-level
// state. A [Material] is immutable once returned and safe for concurrent use.
package tlsconf
