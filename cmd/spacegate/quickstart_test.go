package main

import (
	"crypto/x509"
	"encoding/pem"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spacegate/spacegate/allowlist"
	"github.com/spacegate/spacegate/tlsconf"
)

// quickstartFiles are the files quickstart makes, relative to its dir.
var quickstartFiles = []string{
	"spacegate.yaml",
	"pki/ca.crt", "pki/ca.key", "pki/server.crt", "pki/server.key", "pki/ca.crl",
	"client/postgresql.crt", "client/postgresql.key", "client/root.crt",
	"rules/dev-postgres.yaml", "rules/dev-redis.yaml",
}

// makeQuickstart runs `quickstart --no-serve` into a new directory and
// returns the directory and what the command printed.
func makeQuickstart(t *testing.T) (dir, stdout string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "dev")
	code, stdout, stderr := runCLI(t, "quickstart", "--no-serve", "--dir", dir)
	if code != exitOK {
		t.Fatalf("quickstart exit code = %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	return dir, stdout
}

func TestQuickstartFiles(t *testing.T) {
	dir, _ := makeQuickstart(t)
	for _, name := range quickstartFiles {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("quickstart did not make %s: %v", name, err)
			continue
		}
		if fi.Size() == 0 {
			t.Errorf("%s is empty", name)
		}
	}
	for _, name := range []string{"pki/ca.key", "pki/server.key", "client/postgresql.key"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			continue // reported above
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has mode %#o, want 0600 (libpq refuses a key others can read)", name, perm)
		}
	}
}

func TestQuickstartPrintsClientLines(t *testing.T) {
	dir, stdout := makeQuickstart(t)
	client := filepath.Join(dir, "client")
	_, pgPort, _ := net.SplitHostPort(qsPostgresListen)
	_, redisPort, _ := net.SplitHostPort(qsRedisListen)
	tests := []struct {
		prefix string   // how the line starts, after indentation
		want   []string // what it must contain
	}{
		{"psql ", []string{
			"sslmode=verify-full", "port=" + pgPort, "host=localhost",
			"sslcert=" + filepath.Join(client, "postgresql.crt"),
			"sslkey=" + filepath.Join(client, "postgresql.key"),
			"sslrootcert=" + filepath.Join(client, "root.crt"),
		}},
		{"redis-cli ", []string{
			"--tls", "-p " + redisPort,
			"--cert " + filepath.Join(client, "postgresql.crt"),
			"--key " + filepath.Join(client, "postgresql.key"),
			"--cacert " + filepath.Join(client, "root.crt"),
		}},
	}
	for _, tt := range tests {
		line := findLine(stdout, tt.prefix)
		if line == "" {
			t.Errorf("quickstart printed no line starting %q:\n%s", tt.prefix, stdout)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(line, w) {
				t.Errorf("%s line %q does not contain %q", strings.TrimSpace(tt.prefix), line, w)
			}
		}
	}
}

// findLine returns the first line of s that starts with prefix once its
// indentation is removed, or "".
func findLine(s, prefix string) string {
	for line := range strings.Lines(s) {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func TestQuickstartReusesFiles(t *testing.T) {
	dir, _ := makeQuickstart(t)
	before := readFiles(t, dir)
	code, stdout, stderr := runCLI(t, "quickstart", "--no-serve", "--dir", dir)
	if code != exitOK {
		t.Fatalf("second quickstart exit code = %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	after := readFiles(t, dir)
	for name, data := range before {
		if string(after[name]) != string(data) {
			t.Errorf("second quickstart changed %s; it must reuse what exists", name)
		}
	}
	for name := range after {
		if _, ok := before[name]; !ok {
			t.Errorf("second quickstart added %s", name)
		}
	}
	if strings.Contains(stdout, "created") {
		t.Errorf("second quickstart says it created something:\n%s", stdout)
	}
	if findLine(stdout, "psql ") == "" {
		t.Errorf("second quickstart did not print the psql line again:\n%s", stdout)
	}
}

// readFiles returns the content of every regular file under dir by its
// slash-separated relative name.
func readFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		files[filepath.ToSlash(rel)] = data
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestQuickstartConfigChecks(t *testing.T) {
	dir, _ := makeQuickstart(t)
	code, stdout, stderr := runCLI(t, "check", "--config", filepath.Join(dir, "spacegate.yaml"))
	if code != exitOK {
		t.Fatalf("check of the quickstart config: exit code = %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	for _, route := range []string{qsPostgresRoute, qsRedisRoute} {
		if !strings.Contains(stdout, "route "+route) {
			t.Errorf("check output does not list route %s:\n%s", route, stdout)
		}
	}
}

func TestQuickstartCertificates(t *testing.T) {
	dir, _ := makeQuickstart(t)
	p := func(name string) string { return filepath.Join(dir, name) }
	m, err := tlsconf.Load(tlsconf.Files{
		CertFile:     p("pki/server.crt"),
		KeyFile:      p("pki/server.key"),
		ClientCAFile: p("pki/ca.crt"),
		CRLFile:      p("pki/ca.crl"),
	})
	if err != nil {
		t.Fatalf("tlsconf.Load of the quickstart files: %v", err)
	}

	chain := readCerts(t, p("client/postgresql.crt"))
	id, err := m.Verify(chain, time.Now())
	if err != nil {
		t.Errorf("the gate would refuse the quickstart client certificate: %v", err)
	}
	if id.CommonName == "" {
		t.Errorf("client certificate identity has no common name: %+v", id)
	}
	// One client bundle for both routes: a URI SAN of each, as `certs
	// create` makes them, so that each route accepts it by default.
	for _, route := range []string{qsPostgresRoute, qsRedisRoute} {
		want := "spiffe://spacegate/route/" + route + "/client/"
		found := false
		for _, u := range chain[0].URIs {
			found = found || strings.HasPrefix(u.String(), want)
		}
		if !found {
			t.Errorf("quickstart client certificate URI SANs %v lack %s...", chain[0].URIs, want)
		}
	}

	server := readCerts(t, p("pki/server.crt"))[0]
	if !slices.Contains(server.DNSNames, "localhost") {
		t.Errorf("server certificate DNS names = %q, want localhost among them", server.DNSNames)
	}
	for _, want := range []string{"127.0.0.1", "::1"} {
		found := false
		for _, ip := range server.IPAddresses {
			if a, ok := netip.AddrFromSlice(ip); ok && a.Unmap() == netip.MustParseAddr(want) {
				found = true
			}
		}
		if !found {
			t.Errorf("server certificate IP addresses = %v, want %s among them", server.IPAddresses, want)
		}
	}

	// What psql's sslmode=verify-full does with root.crt.
	roots := x509.NewCertPool()
	for _, c := range readCerts(t, p("client/root.crt")) {
		roots.AddCert(c)
	}
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := server.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
			t.Errorf("server certificate does not verify for %s against client/root.crt: %v", name, err)
		}
	}
}

// readCerts returns the certificates of a PEM file, in file order.
func readCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			t.Fatalf("%s holds a %q PEM block, want only certificates", path, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		t.Fatalf("%s holds no certificates", path)
	}
	return certs
}

func TestQuickstartRules(t *testing.T) {
	dir, _ := makeQuickstart(t)
	want := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::1/128")}
	for _, route := range []string{qsPostgresRoute, qsRedisRoute} {
		rules, err := allowlist.Load(filepath.Join(dir, "rules", route+".yaml"))
		if err != nil {
			t.Errorf("rules of %s: %v", route, err)
			continue
		}
		if got := rules.Prefixes(); !slices.Equal(got, want) {
			t.Errorf("rules of %s allow %v, want exactly %v", route, got, want)
		}
		m, err := allowlist.NewMatcher(rules.Rules)
		if err != nil {
			t.Errorf("matcher for %s: %v", route, err)
			continue
		}
		for _, a := range []string{"127.0.0.1", "::1", "::ffff:127.0.0.1"} {
			if _, ok := m.Lookup(netip.MustParseAddr(a)); !ok {
				t.Errorf("rules of %s do not admit %s", route, a)
			}
		}
		if _, ok := m.Lookup(netip.MustParseAddr("192.0.2.1")); ok {
			t.Errorf("rules of %s admit 192.0.2.1; quickstart must allow loopback only", route)
		}
	}
}
