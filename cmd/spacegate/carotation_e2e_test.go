package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/spacegate/spacegate/internal/testenv"
	"github.com/spacegate/spacegate/tlsconf"
)

// TestCARotationToTheEnd takes a CA rotation to its end through a running
// gate in front of a real PostgreSQL, with the CLI: ca rotate, certs
// revoke of an old-CA certificate (its serial goes into the old CA's CRL
// only), ca prune refused then done. The gate reloads the files as the
// commands write them; each step waits for the verdict it expects.
//
// A certificate of the new CA is forged with the very serial of the
// revoked old-CA certificate: with CRLs per issuer it still gets in.
func TestCARotationToTheEnd(t *testing.T) {
	pg := testenv.StartPostgresT(t, testenv.PostgresOptions{})
	e := newAdminEnv(t, pg.Addr, "127.0.0.1:1")
	_, port, _ := net.SplitHostPort(e.pg)
	e.mustRunCode(t, exitWait, "ip-rules", "create", "db", "--cidr", "127.0.0.1/32", "--description", "loopback") // the gate starts below
	// The gate's server certificate is the old CA's and stays so: clients
	// verify it against the bundle as it was before the rotation.
	roots := x509.NewCertPool()
	for _, c := range readCerts(t, e.path("pki", "ca.crt")) {
		roots.AddCert(c)
	}
	client := func(id string) tls.Certificate {
		b, err := (&tlsconf.CertStore{Dir: e.pki}).ReadClient(id)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair(b.ChainPEM, b.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	connect := func(cert tls.Certificate) error { return pgxConnect(port, roots, cert) }

	old := e.createCert(t, "db")
	doomed := e.createCert(t, "db")
	g := startGate(t, e.config)
	defer g.stop(t)

	out := e.mustRun(t, "ca", "rotate", "--wait", "10s")
	if !strings.Contains(out, "holds its CRL") || !strings.Contains(out, "status: trusted (1/1 replicas)") {
		t.Errorf("ca rotate does not say the new CA has a CRL:\n%s", out)
	}
	twin := forgeTwin(t, e, doomed)
	testenv.WaitFor(t, 10*time.Second, "the gate to trust the new CA", func() bool { return connect(twin) == nil })

	e.mustRun(t, "certs", "revoke", "db", "--id", doomed.ID)
	var err error
	testenv.WaitFor(t, 10*time.Second, "the gate to refuse the revoked old-CA certificate", func() bool {
		err = connect(client(doomed.ID))
		return err != nil
	})
	if want := "client certificate (serial " + doomed.Serial + ") was revoked"; !strings.Contains(err.Error(), want) {
		t.Errorf("revoked old-CA certificate refused with %q, want %q", err, want)
	}
	if err := connect(twin); err != nil {
		t.Errorf("new-CA certificate with the serial revoked under the old CA: %v, want it admitted", err)
	}
	if err := connect(client(old.ID)); err != nil {
		t.Errorf("unrevoked old-CA certificate during the rotation: %v", err)
	}

	// Prune is refused while old is live, then goes through once it is
	// revoked; old-CA certificates are then foreign.
	if code, _, stderr := e.run(t, "ca", "prune"); code != exitError || !strings.Contains(stderr, old.ID) {
		t.Fatalf("ca prune with a live old-CA certificate: exit %d, stderr %q; want 1 naming %s", code, stderr, old.ID)
	}
	e.mustRun(t, "certs", "revoke", "db", "--id", old.ID)
	if out := e.mustRun(t, "ca", "prune", "--wait", "10s"); !strings.Contains(out, "status: pruned (1/1 replicas)") {
		t.Errorf("ca prune with the gate running:\n%s", out)
	}
	testenv.WaitFor(t, 10*time.Second, "the gate to refuse old-CA certificates as foreign", func() bool {
		err = connect(client(old.ID))
		return err != nil && strings.Contains(err.Error(), "is not signed by the space CA")
	})
	if err := connect(client(doomed.ID)); err == nil || !strings.Contains(err.Error(), "is not signed by the space CA") {
		t.Errorf("revoked old-CA certificate after prune: %v, want refused as not signed by the space CA", err)
	}
	if err := connect(twin); err != nil {
		t.Errorf("new-CA certificate after prune: %v", err)
	}
	// No step left the gate with files it refused to load (a CRL of a CA
	// no longer in the bundle would be one).
	if m := failedReloads(t, e.admin); m != 0 {
		t.Errorf("%v reloads failed along the rotation, want none", m)
	}
}

// forgeTwin issues, from the new signing CA of e, a client certificate for
// route db with the same serial number as of, which `certs create` would
// never choose, and returns it with its chain.
func forgeTwin(t *testing.T, e *adminEnv, of certView) tls.Certificate {
	t.Helper()
	ca, err := (&tlsconf.CertStore{Dir: e.pki}).CA()
	if err != nil {
		t.Fatal(err)
	}
	serial, ok := new(big.Int).SetString(of.Serial, 16)
	if !ok {
		t.Fatalf("serial %q is not hex", of.Serial)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := url.Parse(tlsconf.RouteURI(tlsconf.DefaultTrustDomain, "db", "twin-of-"+of.ID))
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "twin"},
		URIs:         []*url.URL{uri},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key}
}

// pgxConnect connects with pgx through the gate on port with cert, trusting
// roots for the server, and runs a query.
func pgxConnect(port string, roots *x509.CertPool, cert tls.Certificate) error {
	cfg, err := pgx.ParseConfig("host=localhost port=" + port + " user=postgres dbname=postgres sslmode=require connect_timeout=10")
	if err != nil {
		return err
	}
	cfg.TLSConfig = &tls.Config{ServerName: "localhost", RootCAs: roots, Certificates: []tls.Certificate{cert}}
	cfg.Fallbacks = nil
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "select 5").Scan(&n); err != nil {
		return err
	}
	if n != 5 {
		return fmt.Errorf("query through the gate returned %d, want 5", n)
	}
	return nil
}

var failedReloadsLine = regexp.MustCompile(`(?m)^spacegate_reloads_total\{result="error"\} (\d+)`)

// failedReloads reads spacegate_reloads_total{result="error"} from the
// gate's /metrics at admin; a series not yet there counts 0.
func failedReloads(t *testing.T, admin string) int {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := failedReloadsLine.FindSubmatch(body)
	if m == nil {
		return 0
	}
	var n int
	fmt.Sscan(string(m[1]), &n)
	return n
}
