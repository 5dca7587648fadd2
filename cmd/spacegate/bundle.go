package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/spacegate/spacegate/internal/atomicfile"
	"github.com/spacegate/spacegate/internal/safefile"
	"github.com/spacegate/spacegate/tlsconf"
)

// clientFiles are the files of a downloaded client bundle, named as the
// managed platform names them: PREFIXpostgresql.crt, PREFIXpostgresql.key,
// PREFIXroot.crt and, for JDBC, PREFIXpostgresql.pk8.
type clientFiles struct {
	Cert  string `json:"cert"`
	Key   string `json:"key"`
	Root  string `json:"root"`
	PKCS8 string `json:"pkcs8,omitempty"`
}

func newClientFiles(dir, prefix string, pkcs8 bool) clientFiles {
	f := clientFiles{
		Cert: filepath.Join(dir, prefix+"postgresql.crt"),
		Key:  filepath.Join(dir, prefix+"postgresql.key"),
		Root: filepath.Join(dir, prefix+"root.crt"),
	}
	if pkcs8 {
		f.PKCS8 = filepath.Join(dir, prefix+"postgresql.pk8")
	}
	return f
}

// write writes the bundle: certificate with chain, key (0600), root.crt,
// and the PKCS#8 DER key (0600) if f.PKCS8 is set. dir is created (0700)
// if needed. Keys are written first, so that a certificate file never
// names a key that is not there yet.
func (f clientFiles) write(b *tlsconf.ClientBundle, rootPEM []byte) error {
	if err := os.MkdirAll(filepath.Dir(f.Cert), 0o700); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(f.Key, b.KeyPEM, 0o600); err != nil {
		return err
	}
	if f.PKCS8 != "" {
		der, err := b.PKCS8DER()
		if err != nil {
			return err
		}
		if err := atomicfile.WriteFile(f.PKCS8, der, 0o600); err != nil {
			return err
		}
	}
	if err := atomicfile.WriteFile(f.Cert, b.ChainPEM, 0o644); err != nil {
		return err
	}
	return atomicfile.WriteFile(f.Root, rootPEM, 0o644)
}

// serverRoots returns, as PEM, what a client needs in root.crt to verify the
// gate's server certificate in serverCertFile: the CAs above it up to a
// self-signed root. Issuers are looked for among the intermediates in
// serverCertFile and the CA files in caFiles (the space CA bundle, the
// client CA bundle, a --server-ca file); missing files among caFiles are
// skipped. The server certificate may come from another CA than the space
// CA. When the root is a CA of the first of caFiles (the space CA bundle),
// the other CAs of that bundle are added too, so that a server certificate
// issued again by a rotated space CA still verifies.
func serverRoots(serverCertFile string, caFiles ...string) ([]byte, error) {
	chain, err := readCertFile(serverCertFile)
	if err != nil {
		return nil, fmt.Errorf("reading the gate's server certificate: %w", err)
	}
	leaf := chain[0]
	pool := chain[1:]
	var space []*x509.Certificate
	for i, f := range caFiles {
		certs, err := readCertFile(f)
		if errors.Is(err, os.ErrNotExist) || f == "" {
			continue
		}
		if err != nil {
			return nil, err
		}
		if i == 0 {
			space = certs
		}
		pool = append(pool, certs...)
	}
	var out []*x509.Certificate
	cur := leaf
	for range 8 {
		if selfSigned(cur) {
			if cur == leaf {
				out = append(out, leaf) // a self-signed server certificate is its own root
			}
			break
		}
		var issuer *x509.Certificate
		for _, c := range pool {
			if c.IsCA && cur.CheckSignatureFrom(c) == nil {
				issuer = c
				break
			}
		}
		if issuer == nil {
			return nil, withHint(fmt.Errorf("cannot find the CA that issued %q (issuer %s) of the gate's server certificate %s", cur.Subject, cur.Issuer, serverCertFile),
				"pass that CA's certificate with --server-ca FILE")
		}
		out = append(out, issuer)
		cur = issuer
	}
	if !selfSigned(out[len(out)-1]) {
		return nil, withHint(fmt.Errorf("the chain of the gate's server certificate %s does not end in a root CA", serverCertFile),
			"pass the root CA's certificate with --server-ca FILE")
	}
	root := out[len(out)-1]
	if containsCert(space, root) {
		for _, c := range space {
			if !containsCert(out, c) {
				out = append(out, c)
			}
		}
	}
	var buf bytes.Buffer
	for _, c := range out {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes(), nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

// readCertFile returns the certificates of a PEM file (a certificate chain
// or a CA bundle), in order.
func readCertFile(path string) ([]*x509.Certificate, error) {
	data, err := safefile.ReadFile(path, safefile.CABundle)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return certs, nil
}

// connectHost is the host name clients should dial: the server
// certificate's first DNS name or IP address, else the route's listen host
// unless it is a wildcard, else localhost.
func connectHost(serverCertFile, listen string) string {
	if certs, err := readCertFile(serverCertFile); err == nil {
		if len(certs[0].DNSNames) > 0 && !strings.Contains(certs[0].DNSNames[0], "*") {
			return certs[0].DNSNames[0]
		}
		if len(certs[0].IPAddresses) > 0 {
			return certs[0].IPAddresses[0].String()
		}
	}
	if host, _, err := net.SplitHostPort(listen); err == nil {
		if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
			return host
		}
	}
	return "localhost"
}

// shellQuote quotes s for a POSIX shell when it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+:=@,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
