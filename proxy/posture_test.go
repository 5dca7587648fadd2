package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/testenv"
	"github.com/spacegate/spacegate/tlsconf"
)

// TLS posture: what the gate refuses at the TLS layer and in its own check
// of the client certificate. README.md, "TLS posture", records what
// testssl.sh finds on a running gate.

// writeClientFiles writes a client certificate (and the certificates after
// it in chain) and its key in PEM to name.crt and name.key in dir, for
// libpq-style sslcert and sslkey.
func writeClientFiles(t *testing.T, dir, name string, key any, chain ...*x509.Certificate) *testenv.ClientCert {
	t.Helper()
	var certPEM []byte
	for _, c := range chain {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := &testenv.ClientCert{
		CertFile: filepath.Join(dir, name+".crt"),
		KeyFile:  filepath.Join(dir, name+".key"),
		Serial:   tlsconf.FormatSerial(chain[0].SerialNumber),
		Cert:     chain[0],
	}
	if err := os.WriteFile(c.CertFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPostureClientCerts drives the gate with pgx and client certificates
// that complete a TLS handshake but must not pass the gate's check.
func TestPostureClientCerts(t *testing.T) {
	e := newEnv(t, envOptions{noRedis: true})
	dir := t.TempDir()

	// A good certificate whose signature was changed after issue: the key
	// still signs the handshake, only the CA's signature is wrong.
	good := e.pki.Client(t, "tampered", testenv.ForRoutes("db"))
	der := append([]byte(nil), good.Cert.Raw...)
	der[len(der)-3] ^= 0x01 // inside the signature's s value
	tampered, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parsing tampered certificate: %v", err)
	}
	badSig := writeClientFiles(t, dir, "badsig", good.TLS.PrivateKey, tampered)

	caAsClient := writeClientFiles(t, dir, "ca", e.pki.CA.Key, e.pki.CA.Cert)

	inter, err := e.pki.CA.Issue(tlsconf.IssueRequest{CommonName: "posture intermediate", IsCA: true})
	if err != nil {
		t.Fatal(err)
	}
	interCA, err := inter.CA()
	if err != nil {
		t.Fatal(err)
	}
	req := tlsconf.IssueRequest{CommonName: "via-intermediate"}
	testenv.ForRoutes("db")(&req)
	viaInter, err := interCA.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	noInter := writeClientFiles(t, dir, "nointer", viaInter.Key, viaInter.Cert)
	withInter := writeClientFiles(t, dir, "withinter", viaInter.Key, viaInter.Cert, inter.Cert)

	weak := e.pki.Client(t, "weak", testenv.WithKeyType(tlsconf.KeyRSA1024), testenv.ForRoutes("db"))
	strongRSA := e.pki.Client(t, "strong-rsa", testenv.WithKeyType(tlsconf.KeyRSA2048), testenv.ForRoutes("db"))

	for _, tc := range []struct {
		name     string
		cert     *testenv.ClientCert
		contains []string
		reason   string // audit reason; "" not checked
	}{
		{name: "bad signature", cert: badSig, reason: "cert_untrusted",
			contains: []string{"not signed by the space CA", badSig.Serial}},
		{name: "CA certificate as client certificate", cert: caAsClient, reason: "cert_usage",
			contains: []string{"is a CA certificate", caAsClient.Serial}},
		{name: "intermediate not sent", cert: noInter, reason: "cert_untrusted",
			contains: []string{"not signed by the space CA", noInter.Serial, "CN=posture intermediate"}},
		{name: "RSA-1024 key", cert: weak, reason: "cert_weak_key",
			contains: []string{"uses a 1024-bit RSA key; at least 2048 bits are required", weak.Serial}},
		{name: "accepted: intermediate sent", cert: withInter},
		{name: "accepted: RSA-2048 key", cert: strongRSA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.refusals(tc.reason))
			c, err := pgConnect(t, e.pgConnString(tc.cert))
			if tc.contains == nil {
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				defer c.Close(context.Background())
				if got := mustQueryInt(t, c, "select 1"); got != 1 {
					t.Fatalf("select 1 = %d", got)
				}
				return
			}
			requireRefusal(t, c, err, "28000", tc.contains...)
			if tc.reason != "" {
				waitFor(t, 5*time.Second, "audit line with reason "+tc.reason, func() bool { return len(e.refusals(tc.reason)) > before })
			}
		})
	}
}

// TestPostureTLSVersions checks the protocol versions and TLS 1.2 cipher
// suites the listeners accept, with crypto/tls clients: TLS 1.0 and 1.1 and
// TLS 1.2 with only CBC or RSA key exchange suites are refused in the
// handshake; TLS 1.2 with ECDHE and AES-GCM or ChaCha20-Poly1305, and TLS
// 1.3, are accepted. No upstream is needed: the handshake comes first.
func TestPostureTLSVersions(t *testing.T) {
	e := newEnv(t, envOptions{pgUpstream: "127.0.0.1:1", redisUpstream: "127.0.0.1:1"})

	// Each way to start TLS: PostgreSQL after an SSLRequest, PostgreSQL 17
	// direct TLS, Redis from the first byte.
	starts := []struct {
		name  string
		addr  string
		start func(net.Conn) error
		alpn  []string
	}{
		{"postgres SSLRequest", e.pgAddr, sslRequest, nil},
		{"postgres direct", e.pgAddr, nil, []string{"postgresql"}},
		{"redis", e.redisAdr, nil, nil},
	}
	cbc := []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,
	}
	rsaKex := []uint16{
		tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_256_CBC_SHA, tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA,
	}
	gcm := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
	chacha := []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256}
	cases := []struct {
		name    string
		version uint16 // offered as both minimum and maximum
		suites  []uint16
		ok      bool
	}{
		{"TLS 1.0", tls.VersionTLS10, nil, false},
		{"TLS 1.1", tls.VersionTLS11, nil, false},
		{"TLS 1.2 CBC only", tls.VersionTLS12, cbc, false},
		{"TLS 1.2 RSA key exchange only", tls.VersionTLS12, rsaKex, false},
		{"TLS 1.2 ECDHE AES-GCM", tls.VersionTLS12, gcm, true},
		{"TLS 1.2 ECDHE ChaCha20-Poly1305", tls.VersionTLS12, chacha, true},
		{"TLS 1.3", tls.VersionTLS13, nil, true},
	}
	for _, s := range starts {
		for _, tc := range cases {
			t.Run(s.name+"/"+tc.name, func(t *testing.T) {
				nc, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer nc.Close()
				_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
				if s.start != nil {
					if err := s.start(nc); err != nil {
						t.Fatal(err)
					}
				}
				cli := tls.Client(nc, &tls.Config{
					RootCAs:      e.pki.ServerPool(),
					ServerName:   "localhost",
					MinVersion:   tc.version,
					MaxVersion:   tc.version,
					CipherSuites: tc.suites,
					NextProtos:   s.alpn,
					Certificates: []tls.Certificate{e.client.TLS},
				})
				err = cli.Handshake()
				if !tc.ok {
					if err == nil {
						st := cli.ConnectionState()
						t.Fatalf("handshake accepted: %s, %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
					}
					t.Logf("refused as expected: %v", err)
					return
				}
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				st := cli.ConnectionState()
				if st.Version != tc.version {
					t.Errorf("version %s, want %s", tls.VersionName(st.Version), tls.VersionName(tc.version))
				}
				if name := tls.CipherSuiteName(st.CipherSuite); !strings.Contains(name, "GCM") && !strings.Contains(name, "CHACHA20") {
					t.Errorf("cipher suite %s is not an AEAD", name)
				}
			})
		}
	}
}

// sslRequest sends a PostgreSQL SSLRequest on nc and requires the answer 'S'.
func sslRequest(nc net.Conn) error {
	if _, err := nc.Write(startupPacket(codeSSLRequest, nil)); err != nil {
		return err
	}
	var b [1]byte
	if _, err := nc.Read(b[:]); err != nil {
		return err
	}
	if b[0] != 'S' {
		return errors.New("SSLRequest answered " + string(b[:]) + ", want S")
	}
	return nil
}
