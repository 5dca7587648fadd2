package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spacegate/spacegate/tlsconf"
)

// createExpired makes a client certificate of the signing CA of e that
// expired 40 minutes ago, through the store with its clock set back.
func (e *adminEnv) createExpired(t *testing.T, route string) *tlsconf.ClientCert {
	t.Helper()
	past := time.Now().Add(-50 * time.Minute)
	store := &tlsconf.CertStore{Dir: e.pki, Now: func() time.Time { return past }}
	cc, err := store.Create(context.Background(), tlsconf.ClientRequest{Routes: []string{route}, ValidFor: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// countCRLs returns how many CRLs the PEM file at path holds.
func countCRLs(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for b, rest := pem.Decode(data); b != nil; b, rest = pem.Decode(rest) {
		if b.Type == "X509 CRL" {
			n++
		}
	}
	return n
}

func TestCAPrune(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	live := e.createCert(t, "db")
	expired := e.createExpired(t, "cache")
	e.mustRunCode(t, exitWait, "ca", "rotate") // no gate runs to confirm it
	fresh := e.createCert(t, "db")
	if n := countCRLs(t, filepath.Join(e.pki, "ca.crl")); n != 2 {
		t.Errorf("ca.crl after rotate holds %d CRLs, want one per CA, 2", n)
	}
	bundleBefore, _ := os.ReadFile(filepath.Join(e.pki, "ca.crt"))

	// Refused: a live certificate of the old CA is named; the expired one
	// and the new CA's are not.
	code, stdout, stderr := e.run(t, "ca", "prune")
	if code != exitError {
		t.Fatalf("ca prune with a live old-CA certificate: exit %d, want 1\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	for _, want := range []string{"route db", "id " + live.ID, "serial " + live.Serial, "notAfter " + showTime(live.ExpiresAt), "hint: ", "--force"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("refusal does not name %q:\n%s", want, stderr)
		}
	}
	for _, not := range []string{expired.ID, fresh.ID} {
		if strings.Contains(stderr, not) {
			t.Errorf("refusal names %s, which does not need the old CA:\n%s", not, stderr)
		}
	}
	if after, _ := os.ReadFile(filepath.Join(e.pki, "ca.crt")); string(after) != string(bundleBefore) {
		t.Error("a refused prune changed ca.crt")
	}
	code, stdout, _ = e.run(t, "ca", "prune", "--json")
	var v pruneView
	if err := json.Unmarshal([]byte(stdout), &v); code != exitError || err != nil || v.Status != "" {
		t.Fatalf("ca prune --json refused: exit %d, JSON error %v\n%s", code, err, stdout)
	}
	if len(v.Removed) != 0 || len(v.Kept) != 2 || len(v.Live) != 1 || v.Live[0].ID != live.ID || v.Live[0].Serial != live.Serial ||
		len(v.Live[0].Routes) != 1 || v.Live[0].Routes[0] != "db" || !v.Live[0].NotAfter.Equal(live.ExpiresAt) {
		t.Errorf("ca prune --json refused: %+v, want nothing removed, 2 kept, %s live", v, live.ID)
	}

	// Revoked, the certificate no longer holds the old CA back.
	e.mustRunCode(t, exitWait, "certs", "revoke", "db", "--id", live.ID) // no gate runs to confirm it
	out := e.mustRunCode(t, exitWait, "ca", "prune")
	if !strings.Contains(out, `removed retired CA "`+tlsconf.DefaultCAName+`"`) || !strings.Contains(out, "now trusts 1 CA") || !strings.Contains(out, "status: "+ruleUnreachable) {
		t.Errorf("ca prune output:\n%s", out)
	}
	bundle := readCerts(t, filepath.Join(e.pki, "ca.crt"))
	if len(bundle) != 1 || bundle[0].Subject.CommonName != tlsconf.DefaultCAName+" G2" {
		t.Fatalf("bundle after prune: %d CAs, first %q; want the G2 CA alone", len(bundle), bundle[0].Subject.CommonName)
	}
	if n := countCRLs(t, filepath.Join(e.pki, "ca.crl")); n != 1 {
		t.Errorf("ca.crl after prune holds %d CRLs, want 1", n)
	}
	if code, stdout, stderr := runCLI(t, "check", "--config", e.config); code != exitOK {
		t.Errorf("check after ca prune: exit %d\n%s%s", code, stdout, stderr)
	}
	if got := e.auditLines(t); got[len(got)-1].Action != "ca.prune" || got[len(got)-1].Subject != "CN="+tlsconf.DefaultCAName {
		t.Errorf("last audit line %+v, want ca.prune of the old CA", got[len(got)-1])
	}
	if out := e.mustRunCode(t, exitWait, "ca", "prune"); !strings.Contains(out, "nothing to prune") {
		t.Errorf("second ca prune: %q, want nothing to prune", out)
	}
}

func TestCAPruneForce(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	live := e.createCert(t, "db")
	e.mustRunCode(t, exitWait, "ca", "rotate") // no gate runs to confirm it
	code, stdout, stderr := e.run(t, "ca", "prune", "--force", "--json")
	var v pruneView
	if err := json.Unmarshal([]byte(stdout), &v); code != exitWait || err != nil || v.Status != ruleUnreachable || v.Replicas != nil {
		t.Fatalf("ca prune --force --json with no gate: exit %d, want 3, status %q, JSON error %v\n%s%s", code, v.Status, err, stdout, stderr)
	}
	if !v.Forced || len(v.Removed) != 1 || len(v.Kept) != 1 || len(v.Live) != 1 || v.Live[0].ID != live.ID {
		t.Errorf("ca prune --force: %+v, want forced, 1 removed, 1 kept, %s named", v, live.ID)
	}
	if !strings.Contains(stderr, "warning: --force") || !strings.Contains(stderr, live.ID) {
		t.Errorf("forced prune does not warn about %s:\n%s", live.ID, stderr)
	}
	if b := readCerts(t, filepath.Join(e.pki, "ca.crt")); len(b) != 1 {
		t.Errorf("bundle after forced prune holds %d CAs, want 1", len(b))
	}
}

// TestCheckWarnsCAWithoutCRL: a CRL file that holds no CRL of a CA of the
// bundle (as one written before CRLs per issuer) loads, and check warns of
// that CA; the next ca rotate writes the missing CRL.
func TestCheckWarnsCAWithoutCRL(t *testing.T) {
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	e.mustRunCode(t, exitWait, "ca", "rotate") // no gate runs to confirm it
	crlFile := filepath.Join(e.pki, "ca.crl")
	data, err := os.ReadFile(crlFile)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := pem.Decode(data) // the new CA's: the old CA is left without one
	writeFile(t, crlFile, string(pem.EncodeToMemory(first)))

	var res checkResult
	e.mustJSON(t, &res, "check")
	want := "holds no CRL of CA CN=" + tlsconf.DefaultCAName + ":"
	if !res.OK || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], want) {
		t.Errorf("check --json: ok %v, warnings %q; want ok and one warning containing %q", res.OK, res.Warnings, want)
	}
	e.mustRunCode(t, exitWait, "ca", "rotate") // no gate runs to confirm it
	if n := countCRLs(t, crlFile); n != 3 {
		t.Errorf("after another rotate ca.crl holds %d CRLs, want 3 (one per CA)", n)
	}
	e.mustJSON(t, &res, "check")
	if len(res.Warnings) != 0 {
		t.Errorf("check after every CA has its CRL warns: %q", res.Warnings)
	}
}
