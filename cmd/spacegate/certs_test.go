package main

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spacegate/spacegate/tlsconf"
)

func TestCertsCreate(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	out := e.mustRun(t, "certs", "create", "db", "--name", "alice")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "id created_at expires_at status name" {
		t.Fatalf("certs create printed %q, want a header id created_at expires_at status name and one row", out)
	}
	fields := strings.Fields(lines[1])
	id := fields[0]
	if fields[len(fields)-2] != "ready" || fields[len(fields)-1] != "alice" {
		t.Errorf("certs create row %q, want status ready and name alice", lines[1])
	}

	cert := readCerts(t, filepath.Join(e.pki, "clients", id, "postgresql.crt"))[0]
	wantURI := "spiffe://spacegate/route/db/client/" + id
	if len(cert.URIs) != 1 || cert.URIs[0].String() != wantURI {
		t.Errorf("certificate URI SANs %v, want only %s", cert.URIs, wantURI)
	}
	if cert.Subject.CommonName != "alice" || len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("certificate %q with usages %v, want alice with clientAuth only", cert.Subject.CommonName, cert.ExtKeyUsage)
	}
	if months := cert.NotAfter.Sub(cert.NotBefore); months < 390*24*time.Hour || months > 400*24*time.Hour {
		t.Errorf("certificate valid for %v, want 13 months", months)
	}
	if fi, _ := os.Stat(filepath.Join(e.pki, "clients", id, "postgresql.key")); fi == nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("stored key is missing or not 0600")
	}

	def := e.createCert(t, "cache")
	if def.Name != "cache-client" || len(def.Routes) != 1 || def.Routes[0] != "cache" {
		t.Errorf("certs create cache gave %+v, want name cache-client for route cache", def)
	}

	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"unknown route", []string{"certs", "create", "nope"}, exitError, "the routes of " + e.config + " are: db, cache"},
		{"no route", []string{"certs", "create"}, exitUsage, "takes one argument, ROUTE"},
		{"two routes", []string{"certs", "create", "db", "cache"}, exitUsage, "takes one argument"},
		{"bad key type", []string{"certs", "create", "db", "--key-type", "dsa"}, exitUsage, "--key-type"},
		{"unknown flag", []string{"certs", "create", "db", "--colour"}, exitUsage, "--colour"},
		{"list unknown route", []string{"certs", "list", "nope"}, exitError, "unknown route"},
	}
	for _, tt := range tests {
		code, stdout, stderr := e.run(t, tt.args...)
		if code != tt.code || !strings.Contains(stderr, tt.stderr) {
			t.Errorf("%s: exit %d, stderr %q; want %d and %q (stdout %q)", tt.name, code, stderr, tt.code, tt.stderr, stdout)
		}
	}

	var list []certView
	e.mustJSON(t, &list, "certs", "list")
	if len(list) != 2 || list[0].ID != id || list[1].ID != def.ID {
		t.Errorf("certs list --json gave %+v, want %s then %s", list, id, def.ID)
	}
	e.mustJSON(t, &list, "certs", "list", "cache")
	if len(list) != 1 || list[0].ID != def.ID {
		t.Errorf("certs list cache --json gave %+v, want only %s", list, def.ID)
	}
}

func TestCertsNoCA(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	for _, f := range []string{"ca.crt", "ca.key"} {
		os.Remove(filepath.Join(e.pki, f))
	}
	code, _, stderr := e.run(t, "certs", "create", "db")
	if code != exitError || !strings.Contains(stderr, "hint: create the space CA with: spacegate ca init") {
		t.Errorf("certs create without a CA: exit %d, stderr %q", code, stderr)
	}
}

func TestCertsDownload(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	c := e.createCert(t, "db")
	dir := filepath.Join(t.TempDir(), "folder")
	out := e.mustRun(t, "certs", "download", "db", "--id", c.ID, "--prefix", "demo_", "--dir", dir, "--pkcs8")

	files := map[string]fs.FileMode{
		"demo_postgresql.crt": 0o644, "demo_postgresql.key": 0o600, "demo_root.crt": 0o644, "demo_postgresql.pk8": 0o600,
	}
	for name, mode := range files {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("download did not write %s: %v", name, err)
		} else if fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %#o, want %#o", name, fi.Mode().Perm(), mode)
		}
	}
	env := exportLines(out)
	for k, name := range map[string]string{"PGSSLCERT": "demo_postgresql.crt", "PGSSLKEY": "demo_postgresql.key", "PGSSLROOTCERT": "demo_root.crt"} {
		if env[k] != filepath.Join(dir, name) {
			t.Errorf("download printed %s=%q, want %q", k, env[k], filepath.Join(dir, name))
		}
	}
	if line := findLine(out, "psql "); !strings.Contains(line, "sslmode=verify-ca") || !strings.Contains(line, "host=localhost") {
		t.Errorf("download printed psql line %q, want host=localhost and sslmode=verify-ca", line)
	}

	chain := readCerts(t, filepath.Join(dir, "demo_postgresql.crt"))
	if len(chain) != 2 || !chain[1].IsCA {
		t.Errorf("demo_postgresql.crt holds %d certificates, want the client certificate and its CA", len(chain))
	}
	der, err := os.ReadFile(filepath.Join(dir, "demo_postgresql.pk8"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		t.Fatalf("demo_postgresql.pk8 is not PKCS#8 DER: %v", err)
	}
	if pub, ok := key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(chain[0].PublicKey) {
		t.Errorf("demo_postgresql.pk8 holds another key than the certificate's")
	}
	// What libpq's sslmode=verify-ca does with root.crt.
	roots := x509.NewCertPool()
	for _, c := range readCerts(t, filepath.Join(dir, "demo_root.crt")) {
		roots.AddCert(c)
	}
	server := readCerts(t, filepath.Join(e.pki, "server.crt"))[0]
	if _, err := server.Verify(x509.VerifyOptions{Roots: roots}); err != nil {
		t.Errorf("the gate's server certificate does not verify against demo_root.crt: %v", err)
	}

	// A Redis route prints a redis-cli line; a certificate of another route
	// is refused.
	redisCert := e.createCert(t, "cache")
	out = e.mustRun(t, "certs", "download", "cache", "--id", redisCert.ID, "--dir", dir)
	if line := findLine(out, "redis-cli "); !strings.Contains(line, "--tls") || !strings.Contains(line, filepath.Join(dir, "postgresql.crt")) {
		t.Errorf("download for a Redis route printed no redis-cli line:\n%s", out)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"other route", []string{"certs", "download", "cache", "--id", c.ID, "--dir", dir}, exitError, "not a certificate of route cache"},
		{"unknown id", []string{"certs", "download", "db", "--id", "00000000-0000-4000-8000-000000000000", "--dir", dir}, exitError, "no such client certificate"},
		{"bad id", []string{"certs", "download", "db", "--id", "../../ca", "--dir", dir}, exitError, "not a UUID"},
		{"no id", []string{"certs", "download", "db", "--dir", dir}, exitUsage, "needs --id"},
	}
	for _, tt := range tests {
		code, _, stderr := e.run(t, tt.args...)
		if code != tt.code || !strings.Contains(stderr, tt.stderr) {
			t.Errorf("%s: exit %d, stderr %q; want %d and %q", tt.name, code, stderr, tt.code, tt.stderr)
		}
	}
}

// TestCertsDownloadForeignServerCA: the gate's server certificate comes
// from another CA than the space CA, so root.crt must hold that CA.
func TestCertsDownloadForeignServerCA(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	public, err := tlsconf.NewCA("public root", tlsconf.KeyECDSAP256, 0)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := public.Issue(tlsconf.IssueRequest{CommonName: "public intermediate", IsCA: true})
	if err != nil {
		t.Fatal(err)
	}
	interCA, _ := inter.CA()
	server, err := interCA.Issue(tlsconf.IssueRequest{CommonName: "db.example.com", DNSNames: []string{"db.example.com"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	// The server file holds the leaf and the intermediate, as usual.
	writeFile(t, filepath.Join(e.pki, "server.crt"), string(server.CertPEM)+string(inter.CertPEM))
	writeFile(t, filepath.Join(e.pki, "server.key"), string(server.KeyPEM))
	publicFile := filepath.Join(t.TempDir(), "public.crt")
	writeFile(t, publicFile, string(public.CertPEM))

	c := e.createCert(t, "db")
	dir := t.TempDir()
	code, _, stderr := e.run(t, "certs", "download", "db", "--id", c.ID, "--dir", dir)
	if code != exitError || !strings.Contains(stderr, "--server-ca") {
		t.Fatalf("download without the server's root: exit %d, stderr %q; want 1 and a hint to --server-ca", code, stderr)
	}
	out := e.mustRun(t, "certs", "download", "db", "--id", c.ID, "--dir", dir, "--server-ca", publicFile)
	root := readCerts(t, filepath.Join(dir, "root.crt"))
	if len(root) != 2 || root[0].Subject.CommonName != "public intermediate" || root[1].Subject.CommonName != "public root" {
		t.Errorf("root.crt holds %d certificates, want the intermediate and the public root", len(root))
	}
	if line := findLine(out, "psql "); !strings.Contains(line, "host=db.example.com") {
		t.Errorf("psql line %q does not name the server certificate's host", line)
	}
}

func TestCertsRevoke(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	a, b := e.createCert(t, "db"), e.createCert(t, "cache")
	e.mustRunCode(t, exitWait, "certs", "revoke", "db", "--id", a.ID) // no gate runs to confirm it
	crl := readCRL(t, filepath.Join(e.pki, "ca.crl"))
	if len(crl.RevokedCertificateEntries) != 1 || tlsconf.FormatSerial(crl.RevokedCertificateEntries[0].SerialNumber) != a.Serial {
		t.Errorf("CRL lists %v, want only serial %s", crl.RevokedCertificateEntries, a.Serial)
	}
	var list []certView
	e.mustJSON(t, &list, "certs", "list")
	if list[0].Status != "revoked" || list[1].Status != "ready" {
		t.Errorf("statuses after revoke: %s, %s; want revoked, ready", list[0].Status, list[1].Status)
	}
	crlBefore, err := os.ReadFile(filepath.Join(e.pki, "ca.crl"))
	if err != nil {
		t.Fatal(err)
	}
	// Twice: nothing to write; it asks the fleet again, with the exit
	// code of a new revocation (3: no gate runs to confirm it).
	code, stdout, stderr := e.run(t, "certs", "revoke", "db", "--id", a.ID)
	if code != exitWait || !strings.Contains(stdout, "certificate "+a.ID+" (serial "+a.Serial+") was already revoked at ") ||
		!strings.Contains(stdout, "is unchanged") || !strings.Contains(stdout, "status: unknown: gate not reachable") ||
		!strings.Contains(stderr, "revocation of "+a.ID) {
		t.Errorf("revoke twice: exit %d, want 3\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	var again struct {
		certView
		AlreadyRevoked bool           `json:"already_revoked"`
		Replicas       *fleetProgress `json:"replicas"`
	}
	e.mustJSONCode(t, exitWait, &again, "certs", "revoke", "db", "--id", a.ID)
	if again.ID != a.ID || !again.AlreadyRevoked || again.Status != "unknown: gate not reachable" || again.RevokedAt.IsZero() || again.Replicas != nil {
		t.Errorf("revoke twice --json: %+v", again)
	}
	if crlAfter, err := os.ReadFile(filepath.Join(e.pki, "ca.crl")); err != nil || string(crlAfter) != string(crlBefore) {
		t.Errorf("revoking twice changed the CRL (%v)", err)
	}
	tests := []struct {
		name   string
		args   []string
		stderr string
	}{
		{"other route", []string{"certs", "revoke", "db", "--id", b.ID}, "not a certificate of route db"},
		{"download revoked", []string{"certs", "download", "db", "--id", a.ID, "--dir", t.TempDir()}, "was revoked"},
	}
	for _, tt := range tests {
		if code, _, stderr := e.run(t, tt.args...); code != exitError || !strings.Contains(stderr, tt.stderr) {
			t.Errorf("%s: exit %d, stderr %q; want 1 and %q", tt.name, code, stderr, tt.stderr)
		}
	}
	if got := readCRL(t, filepath.Join(e.pki, "ca.crl")); len(got.RevokedCertificateEntries) != 1 {
		t.Errorf("refused revocations changed the CRL")
	}
}

func TestCertsRotate(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	long := e.createCert(t, "db")
	short := e.createCert(t, "db", "--days", "30", "--name", "build-bot")
	other := e.createCert(t, "cache", "--days", "30")
	if short.Status != "expiring" || long.Status != "ready" {
		t.Fatalf("statuses %s (30 days) and %s (13 months); want expiring and ready", short.Status, long.Status)
	}

	out := e.mustRun(t, "certs", "rotate", "db")
	if !strings.Contains(out, short.ID) || strings.Contains(out, other.ID) || strings.Contains(out, long.ID) {
		t.Errorf("certs rotate db does not name exactly the expiring certificate of db:\n%s", out)
	}
	var renewed []renewalView
	e.mustJSON(t, &renewed, "certs", "rotate")
	if len(renewed) != 1 || renewed[0].Old.ID != other.ID {
		t.Fatalf("certs rotate after db was done renewed %+v, want only %s", renewed, other.ID)
	}
	n := renewed[0].New
	if n.Status != "ready" || n.Replaces != other.ID || n.Routes[0] != "cache" || !n.ExpiresAt.After(time.Now().AddDate(1, 0, 0)) {
		t.Errorf("replacement %+v, want a ready 13-month certificate for cache replacing %s", n, other.ID)
	}
	if out := e.mustRun(t, "certs", "rotate"); !strings.Contains(out, "no client certificate needs") {
		t.Errorf("third rotate printed %q, want that nothing needs replacing", out)
	}
	var list []certView
	e.mustJSON(t, &list, "certs", "list", "db")
	if len(list) != 3 || list[1].ReplacedBy == "" || list[2].Replaces != short.ID || list[2].Name != "build-bot" {
		t.Errorf("certs list db after rotate: %+v", list)
	}
	rotations := 0
	for _, a := range e.auditLines(t) {
		if a.Action == "cert.rotate" {
			rotations++
			if a.Replaces == "" || a.ID == "" {
				t.Errorf("audit line of a rotation without ids: %+v", a)
			}
		}
	}
	if rotations != 2 {
		t.Errorf("audit log has %d cert.rotate lines, want 2", rotations)
	}
}

// exportLines returns the NAME=value of the "export NAME=value" lines of
// out, unquoting single-quoted values as a shell would.
func exportLines(out string) map[string]string {
	env := map[string]string{}
	for line := range strings.Lines(out) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "export ")
		if !ok {
			continue
		}
		k, v, _ := strings.Cut(rest, "=")
		if strings.HasPrefix(v, "'") {
			v = strings.ReplaceAll(strings.Trim(v, "'"), `'\''`, "'")
		}
		env[k] = v
	}
	return env
}

func readCRL(t *testing.T, path string) *x509.RevocationList {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blocks := readPEMBlocks(data)
	if len(blocks) != 1 {
		t.Fatalf("%s holds %d PEM blocks, want one CRL", path, len(blocks))
	}
	crl, err := x509.ParseRevocationList(blocks[0])
	if err != nil {
		t.Fatal(err)
	}
	return crl
}

// readPEMBlocks returns the bytes of every PEM block in data.
func readPEMBlocks(data []byte) [][]byte {
	var out [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		out = append(out, b.Bytes)
	}
}

func TestCertsCreateAllowedClientsNote(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	data, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, e.config, strings.Replace(string(data), "    max_ip_rules: 2\n", "    max_ip_rules: 2\n    allowed_clients: [\"cn:etl-*\"]\n", 1))
	tests := []struct {
		args []string
		note bool
	}{
		{[]string{"certs", "create", "cache"}, true},
		{[]string{"certs", "create", "cache", "--name", "etl-nightly"}, false},
		{[]string{"certs", "create", "db"}, false},
	}
	for _, tt := range tests {
		code, _, stderr := e.run(t, tt.args...)
		if code != exitOK {
			t.Fatalf("%v: exit %d: %s", tt.args, code, stderr)
		}
		if got := strings.Contains(stderr, "do not accept this certificate"); got != tt.note {
			t.Errorf("%v: note about allowed_clients printed = %v, want %v\n%s", tt.args, got, tt.note, stderr)
		}
	}
}
