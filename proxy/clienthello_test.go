package proxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/internal/testenv"
)

func TestClientHelloServerName(t *testing.T) {
	hello := clientHelloFor(t, "db.example.com", "")[5:]
	// crypto/tls's client drops a trailing dot itself; put one back by
	// growing every length around the name, as libpq's OpenSSL sends it.
	i := bytes.Index(hello, []byte("db.example.com"))
	dotted := append(append(append([]byte{}, hello[:i+14]...), '.'), hello[i+14:]...)
	for _, at := range []int{i - 2, i - 5, i - 7} { // host_name, server_name_list, extension
		binary.BigEndian.PutUint16(dotted[at:], binary.BigEndian.Uint16(dotted[at:])+1)
	}
	n := int(dotted[1])<<16 | int(dotted[2])<<8 | int(dotted[3]) + 1
	dotted[1], dotted[2], dotted[3] = byte(n>>16), byte(n>>8), byte(n)
	exts := 4 + 2 + 32 + 1 + int(dotted[4+2+32]) // handshake header, version, random, session id
	exts += 2 + int(binary.BigEndian.Uint16(dotted[exts:]))
	exts += 1 + int(dotted[exts])
	binary.BigEndian.PutUint16(dotted[exts:], binary.BigEndian.Uint16(dotted[exts:])+1)

	for _, tc := range []struct {
		name  string
		hello []byte
		want  string
		ok    bool
	}{
		{"crypto/tls hello", hello, "db.example.com", true},
		{"trailing dot", dotted, "db.example.com.", true},
		{"no SNI", clientHelloFor(t, "", "")[5:], "", false},
		{"cut short", hello[:i], "", false},
		{"not a ClientHello", append([]byte{2}, hello[1:]...), "", false},
		{"empty", nil, "", false},
	} {
		if got, ok := clientHelloServerName(tc.hello); got != tc.want || ok != tc.ok {
			t.Errorf("%s: got %q, %v; want %q, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzClientHelloServerName(f *testing.F) {
	f.Add(clientHelloFor(f, "db.example.com", "")[5:])
	f.Fuzz(func(t *testing.T, b []byte) {
		if name, ok := clientHelloServerName(b); ok && !bytes.Contains(b, []byte(name)) {
			t.Fatalf("name %q is not in the input", name)
		}
	})
}

// TestSNITrailingDot: a host typed with a trailing dot ("localhost.") is
// sent as is in SNI by libpq and redis-cli. TLS forbids it; the client gets
// an unrecognized_name alert (not a decode_error) and the log line says
// which name to use.
func TestSNITrailingDot(t *testing.T) {
	testenv.Require(t, "psql")
	testenv.Require(t, "redis-cli")
	e := newEnv(t, envOptions{})
	out, err := exec.Command("psql", pgURL(e.pki, e.client, "localhost.", e.pgAddr, "verify-ca"), "-XAtc", "select 1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "unrecognized name") {
		t.Errorf("psql host=localhost.: %v: %s; want an unrecognized name alert", err, out)
	}
	t.Logf("psql: %s", out)
	host, port, _ := net.SplitHostPort(e.redisAdr)
	out, err = exec.Command("redis-cli", "--tls", "--sni", "localhost.", "--cert", e.client.CertFile, "--key", e.client.KeyFile,
		"--cacert", e.pki.CAFile, "-h", host, "-p", port, "ping").CombinedOutput()
	if strings.Contains(string(out), "PONG") || !strings.Contains(string(out), "unrecognized name") {
		t.Errorf("redis-cli --sni localhost.: %v: %s; want an unrecognized name alert", err, out)
	}
	t.Logf("redis-cli: %s", out)
	// redis-cli tries twice.
	waitFor(t, 5*time.Second, "a refusal of each", func() bool { return len(e.refusals("unknown_server_name")) >= 2 })
	for i, l := range e.refusals("unknown_server_name") {
		line := l.ContextMap()
		if route := []string{"db", "cache"}[min(i, 1)]; line["route"] != route || line["sni"] != "localhost." ||
			!strings.Contains(fmt.Sprint(line["message"]), `ends in a dot, which TLS does not allow (RFC 6066); the client should connect to host localhost`) {
			t.Errorf("refusal line %d: %v, want route %s", i, line, route)
		}
	}
	metrics := e.get(t, "/metrics")
	for _, route := range []string{"db", "cache"} {
		if want := `spacegate_connections_refused_total{reason="unknown_server_name",route="` + route + `"}`; !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The same clients without the dot get in.
	out, err = exec.Command("psql", pgURL(e.pki, e.client, "localhost", e.pgAddr, "verify-full"), "-XAtc", "select 1").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Errorf("psql host=localhost: %v: %s", err, out)
	}
	if n := len(e.logs.FilterField(zap.String("reason", "handshake_failed")).All()); n != 0 {
		t.Errorf("%d handshake_failed refusals, want none", n)
	}
}

func BenchmarkClientHelloServerName(b *testing.B) {
	hello := clientHelloFor(b, "db.example.com", "")[5:]
	for b.Loop() {
		if _, ok := clientHelloServerName(hello); !ok {
			b.Fatal("no name")
		}
	}
}

// TestSNITrailingDotShared: on an address shared by routes, the refusal of
// "db-b.test." is logged and counted under route b, the one it meant.
func TestSNITrailingDotShared(t *testing.T) {
	testenv.Require(t, "psql")
	pki := testenv.NewPKI(t)
	certA, keyA := serverCert(t, pki, "a", "db-a.test")
	certB, keyB := serverCert(t, pki, "b", "db-b.test")
	addr := testenv.FreeAddr(t)
	e := newEnv(t, envOptions{pki: pki, routes: fmt.Sprintf(`  - name: a
    protocol: postgres
    listen: %[1]s
    server_names: [db-a.test]
    upstream: {{pg}}
    ip_rules_file: rules.yaml
    tls: {cert_file: %[2]s, key_file: %[3]s}
  - name: b
    protocol: postgres
    listen: %[1]s
    server_names: [db-b.test]
    upstream: {{pg}}
    ip_rules_file: rules.yaml
    tls: {cert_file: %[4]s, key_file: %[5]s}
`, addr, certA, keyA, certB, keyB)})
	client := pki.Client(t, "both", testenv.ForRoutes("a", "b"))
	out, err := exec.Command("psql", pgURL(pki, client, "db-b.test.", addr, "verify-full"), "-XAtc", "select 1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "unrecognized name") {
		t.Fatalf("psql host=db-b.test.: %v: %s", err, out)
	}
	waitFor(t, 5*time.Second, "the refusal", func() bool { return len(e.refusals("unknown_server_name")) == 1 })
	if line := e.refusals("unknown_server_name")[0].ContextMap(); line["route"] != "b" || line["sni"] != "db-b.test." {
		t.Errorf("refusal line %v, want route b", line)
	}
	out, err = exec.Command("psql", pgURL(pki, client, "db-b.test", addr, "verify-full"), "-XAtc", "select 1").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Errorf("psql host=db-b.test: %v: %s", err, out)
	}
}

// TestServerNamesTrailingDot: a fully qualified name in server_names is the
// name without its dot, also when two routes would claim it.
func TestServerNamesTrailingDot(t *testing.T) {
	route := func(name, names string) string {
		return fmt.Sprintf("  - name: %s\n    protocol: postgres\n    listen: 127.0.0.1:6432\n    server_names: %s\n    upstream: 127.0.0.1:5432\n    ip_rules_file: rules/db.yaml\n", name, names)
	}
	head := "tls: {cert_file: a, key_file: b, client_ca_file: c}\nroutes:\n"
	cfg, err := config.Parse([]byte(head+route("a", "[db-a.test.]")+route("b", "[DB-B.test]")), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Routes[0].ServerNames; len(got) != 1 || got[0] != "db-a.test" {
		t.Errorf("server_names = %q, want [db-a.test]", got)
	}
	_, err = config.Parse([]byte(head+route("a", "[db.test.]")+route("b", "[db.test]")), "c.yaml")
	if err == nil || !strings.Contains(err.Error(), `server name "db.test" is already served by route "a"`) {
		t.Errorf("the same name with and without a dot: %v", err)
	}
	_, err = config.Parse([]byte(head+route("a", "[db.test..]")+route("b", "[b.test]")), "c.yaml")
	if err == nil || !strings.Contains(err.Error(), `server name "db.test." is not a host name`) {
		t.Errorf("two dots: %v", err)
	}
}
