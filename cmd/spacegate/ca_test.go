package main

import (
	"crypto/rsa"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/testenv"
	"github.com/spacegate/spacegate/tlsconf"
)

func TestCAInit(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	for name, want := range map[string]fs.FileMode{
		"ca.crt": 0o644, "ca.key": 0o600, "ca.crl": 0o644, "server.crt": 0o644, "server.key": 0o600, "audit.log": 0o600,
	} {
		fi, err := os.Stat(filepath.Join(e.pki, name))
		if err != nil {
			t.Errorf("ca init did not make %s: %v", name, err)
			continue
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %#o, want %#o", name, fi.Mode().Perm(), want)
		}
	}
	// The config names the bundle, the CRL and the server certificate
	// from the start, and check takes them.
	if code, stdout, stderr := runCLI(t, "check", "--config", e.config); code != exitOK {
		t.Errorf("check after ca init: exit %d\n%s%s", code, stdout, stderr)
	}
	server := readCerts(t, filepath.Join(e.pki, "server.crt"))[0]
	if server.Subject.CommonName != "localhost" || len(server.IPAddresses) != 1 {
		t.Errorf("server certificate is for %q %v, want localhost and 127.0.0.1", server.DNSNames, server.IPAddresses)
	}

	before, _ := os.ReadFile(filepath.Join(e.pki, "ca.crt"))
	code, _, stderr := e.run(t, "ca", "init")
	if code != exitError || !strings.Contains(stderr, "refusing to overwrite") || !strings.Contains(stderr, "hint: ") {
		t.Errorf("second ca init: exit %d, stderr %q; want 1 with a refusal and a hint", code, stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(e.pki, "ca.crt")); string(after) != string(before) {
		t.Errorf("second ca init replaced the CA")
	}
	if got := e.auditLines(t); len(got) != 2 || got[0].Action != "ca.init" || got[0].User == "" || got[1].Action != "cert.create_server" {
		t.Errorf("audit log after ca init: %+v, want ca.init then cert.create_server, with a user", got)
	}
}

func TestCAInitOptions(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		rsa  bool
		cn   string
	}{
		{"default", nil, exitOK, false, tlsconf.DefaultCAName},
		{"rsa", []string{"--key-type", "rsa-2048", "--name", "Sushi CA"}, exitOK, true, "Sushi CA"},
		{"bad key type", []string{"--key-type", "dsa"}, exitUsage, false, ""},
		{"extra argument", []string{"now"}, exitUsage, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			code, stdout, stderr := runCLI(t, append([]string{"ca", "init", "--pki-dir", dir}, tt.args...)...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, stdout, stderr)
			}
			if code != exitOK {
				if _, err := os.Stat(filepath.Join(dir, "ca.key")); err == nil {
					t.Errorf("a refused ca init wrote a key")
				}
				return
			}
			ca := readCerts(t, filepath.Join(dir, "ca.crt"))[0]
			if _, isRSA := ca.PublicKey.(*rsa.PublicKey); isRSA != tt.rsa || ca.Subject.CommonName != tt.cn {
				t.Errorf("CA %q with a %T key, want %q (RSA %v)", ca.Subject.CommonName, ca.PublicKey, tt.cn, tt.rsa)
			}
			if !strings.Contains(stdout, "tls.client_ca_file") || !strings.Contains(stdout, "tls.crl_file") {
				t.Errorf("ca init does not say which config keys name its files:\n%s", stdout)
			}
		})
	}
}

func TestCARotate(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	old := e.createCert(t, "db")
	out := e.mustRunCode(t, exitWait, "ca", "rotate") // no gate runs to confirm it
	if !strings.Contains(out, "trusts 2 CAs") || !strings.Contains(out, "status: "+ruleUnreachable) {
		t.Errorf("ca rotate output does not say the bundle has 2 CAs:\n%s", out)
	}
	bundle := readCerts(t, filepath.Join(e.pki, "ca.crt"))
	if len(bundle) != 2 || bundle[0].Subject.CommonName != tlsconf.DefaultCAName+" G2" {
		t.Fatalf("bundle after rotate: %d CAs, first %q", len(bundle), bundle[0].Subject.CommonName)
	}
	fresh := e.createCert(t, "db")
	m, err := tlsconf.Load(tlsconf.Files{
		CertFile: filepath.Join(e.pki, "server.crt"), KeyFile: filepath.Join(e.pki, "server.key"),
		ClientCAFile: filepath.Join(e.pki, "ca.crt"), CRLFile: filepath.Join(e.pki, "ca.crl"),
	})
	if err != nil {
		t.Fatalf("the gate would not load the rotated files: %v", err)
	}
	for _, c := range []certView{old, fresh} {
		chain := readCerts(t, filepath.Join(e.pki, "clients", c.ID, "postgresql.crt"))
		if _, err := m.Verify(chain, time.Now()); err != nil {
			t.Errorf("after rotation the gate refuses %s (issuer %s): %v", c.ID, c.Issuer, err)
		}
	}
	if fresh.Issuer != "CN="+tlsconf.DefaultCAName+" G2" {
		t.Errorf("certificate made after rotation is issued by %q, want the new CA", fresh.Issuer)
	}
	// Revoking a certificate of the old CA after the rotation.
	e.mustRunCode(t, exitWait, "certs", "revoke", "db", "--id", old.ID) // no gate runs to confirm it
	m, err = tlsconf.Load(tlsconf.Files{
		CertFile: filepath.Join(e.pki, "server.crt"), KeyFile: filepath.Join(e.pki, "server.key"),
		ClientCAFile: filepath.Join(e.pki, "ca.crt"), CRLFile: filepath.Join(e.pki, "ca.crl"),
	})
	if err != nil {
		t.Fatalf("the gate would not load the new CRL: %v", err)
	}
	chain := readCerts(t, filepath.Join(e.pki, "clients", old.ID, "postgresql.crt"))
	if _, err := m.Verify(chain, time.Now()); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("old-CA certificate revoked after rotation: Verify = %v, want revoked", err)
	}
	// Revoking it again waits for the CRL that lists it (the old CA's),
	// not for the new CA's as well.
	all, err := crlNumbers(filepath.Join(e.pki, "ca.crl"))
	if err != nil {
		t.Fatal(err)
	}
	listing, err := crlsListing(filepath.Join(e.pki, "ca.crl"), old.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || len(listing) != 1 || listing[old.Issuer] == nil || listing[old.Issuer].Cmp(all[old.Issuer]) != 0 {
		t.Errorf("CRLs listing %s: %v, want only that of %s among %v", old.Serial, listing, old.Issuer, all)
	}
	if notRevoked, err := crlsListing(filepath.Join(e.pki, "ca.crl"), fresh.Serial); err != nil || len(notRevoked) != 2 {
		t.Errorf("CRLs listing an unrevoked serial: %v, %v; want every CRL of the file", notRevoked, err)
	}
}

// TestCARotatePKIDir: with --pki-dir there is no config, hence no admin
// endpoint to ask unless --admin names one: rotate and prune only write
// files and exit 0; with an --admin where nothing listens, 3.
func TestCARotatePKIDir(t *testing.T) {
	dir := t.TempDir()
	if code, stdout, stderr := runCLI(t, "ca", "init", "--pki-dir", dir); code != exitOK {
		t.Fatalf("ca init --pki-dir: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, stdout, stderr := runCLI(t, "ca", "rotate", "--pki-dir", dir); code != exitOK || !strings.Contains(stdout, "status: unknown") {
		t.Errorf("ca rotate --pki-dir: exit %d, want 0 with the fleet unknown\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr := runCLI(t, "ca", "rotate", "--pki-dir", dir, "--json", "--name", "third")
	var v rotateView
	if err := json.Unmarshal([]byte(stdout), &v); err != nil || code != exitOK || v.Created.Subject != "CN=third" ||
		len(v.Bundle) != 3 || v.Bundle[0].Subject != "CN=third" || v.Status != ruleNoAdmin || v.Replicas != nil {
		t.Errorf("ca rotate --json: exit %d, %+v (%v)\n%s%s", code, v, err, stdout, stderr)
	}
	nobody := "http://" + testenv.FreeAddr(t)
	if code, stdout, stderr := runCLI(t, "ca", "check", "--pki-dir", dir, "--admin", nobody); code != exitWait || !strings.Contains(stderr, "gate not reachable") {
		t.Errorf("ca check --admin %s with no gate: exit %d, want 3\n%s%s", nobody, code, stdout, stderr)
	}
	if code, stdout, stderr := runCLI(t, "ca", "prune", "--pki-dir", dir); code != exitOK || !strings.Contains(stdout, "removed retired CA") {
		t.Errorf("ca prune --pki-dir: exit %d, want 0\n%s%s", code, stdout, stderr)
	}
}

func TestAdminCommandsMissingConfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	for _, args := range [][]string{
		{"ca", "init"}, {"ca", "rotate"}, {"certs", "list"}, {"certs", "create", "db"}, {"certs", "rotate"},
		{"ip-rules", "list", "db"}, {"ip-rules", "create", "db", "--cidr", "10.0.0.0/8", "--description", "x"},
	} {
		code, _, stderr := runCLI(t, append(args, "--config", missing)...)
		if code != exitError || !strings.Contains(stderr, missing) || !strings.Contains(stderr, "hint: pass the config file") {
			t.Errorf("%v with a missing config: exit %d, stderr %q; want 1 naming the file, with a hint", args, code, stderr)
		}
	}
}
