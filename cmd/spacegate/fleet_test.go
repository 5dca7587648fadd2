package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/internal/testenv"
)

// fleetEnv is three gate processes serving the same routes on the same
// addresses (SO_REUSEPORT), each with its own admin endpoint and all three
// in admin.fleet, sharing one admin token. Replicas 1 and 2 read the
// files of the adminEnv; replica 3 reads its own copies of the db rules
// file, of the CA bundle and of the CRL, which the test lets go stale.
type fleetEnv struct {
	*adminEnv
	token   string
	admins  [3]string // admin base URLs, in replica order
	rules3  string    // replica 3's copy of rules/db.yaml
	crl3    string    // replica 3's copy of pki/ca.crl
	ca3     string    // replica 3's copy of pki/ca.crt
	configs [3]string
}

func newFleetEnv(t *testing.T) *fleetEnv {
	t.Helper()
	bin := needBinary(t)
	e := newAdminEnv(t, "127.0.0.1:1", "127.0.0.1:1")
	f := &fleetEnv{adminEnv: e, token: "fleet-token-0123456789abcdef"}
	e.withAdminToken(t, f.token)
	addrs := [3]string{e.admin, testenv.FreeAddr(t), testenv.FreeAddr(t)}
	var fleet strings.Builder
	fleet.WriteString("  fleet:\n")
	for i, a := range addrs {
		f.admins[i] = "http://" + a
		fleet.WriteString("    - http://" + a + "\n")
	}
	base, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	withFleet := strings.Replace(string(base), "  token_file: admin.token\n", "  token_file: admin.token\n"+fleet.String(), 1)
	writeFile(t, e.config, withFleet)
	f.configs[0] = e.config

	f.configs[1] = e.path("spacegate-2.yaml")
	writeFile(t, f.configs[1], strings.Replace(withFleet, "listen: "+addrs[0]+"\n", "listen: "+addrs[1]+"\n", 1))

	f.rules3, f.crl3, f.ca3 = e.path("replica-3", "db.yaml"), e.path("replica-3", "ca.crl"), e.path("replica-3", "ca.crt")
	if err := os.MkdirAll(e.path("replica-3"), 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, e.path("rules", "db.yaml"), f.rules3)
	copyFile(t, e.path("pki", "ca.crl"), f.crl3)
	copyFile(t, e.path("pki", "ca.crt"), f.ca3)
	third := strings.Replace(withFleet, "listen: "+addrs[0]+"\n", "listen: "+addrs[2]+"\n", 1)
	third = strings.Replace(third, "ip_rules_file: rules/db.yaml", "ip_rules_file: replica-3/db.yaml", 1)
	third = strings.Replace(third, "crl_file: pki/ca.crl", "crl_file: replica-3/ca.crl", 1)
	third = strings.Replace(third, "client_ca_file: pki/ca.crt", "client_ca_file: replica-3/ca.crt", 1)
	f.configs[2] = e.path("spacegate-3.yaml")
	writeFile(t, f.configs[2], third)

	for i, c := range f.configs {
		p := startServe(t, bin, c, "--replica-name", "gate-"+string(rune('1'+i)))
		p.waitReady(t, addrs[i])
	}
	return f
}

// copyFile copies src over dst by a rename, as rsync and a kubelet do.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// fleet asks replica i for /v1/fleet with the token.
func (f *fleetEnv) fleet(t *testing.T, i int) admin.Fleet {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.admins[i]+"/v1/fleet", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+f.token)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/v1/fleet of replica %d: %s %v\n%s", i+1, resp.Status, err, body)
	}
	var fl admin.Fleet
	if err := json.Unmarshal(body, &fl); err != nil {
		t.Fatalf("/v1/fleet: %v\n%s", err, body)
	}
	return fl
}

// awaitInSync waits until /v1/fleet of replica 1 says in_sync.
func (f *fleetEnv) awaitInSync(t *testing.T, why string) admin.Fleet {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		fl := f.fleet(t, 0)
		if fl.InSync {
			return fl
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not in sync after 15s: %+v", why, fl.Differs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestFleetStaleRules: three gate processes, one on a stale copy of a
// rules file. /v1/fleet names the difference, `ip-rules create --wait`
// exits 3 naming the stale replica, `spacegate status` marks the drift,
// and once the file is copied `ip-rules get --wait` exits 0 with 3/3.
func TestFleetStaleRules(t *testing.T) {
	f := newFleetEnv(t)
	fl := f.awaitInSync(t, "at start")
	if len(fl.Replicas) != 3 {
		t.Fatalf("%d replicas, want 3: %+v", len(fl.Replicas), fl.Replicas)
	}
	names := map[string]string{}
	for _, r := range fl.Replicas {
		names[r.URL] = r.Name
		if r.Fingerprint != fl.Replicas[0].Fingerprint || r.Fingerprint == "" {
			t.Errorf("replica %s fingerprint %q, replica %s %q: the same files must give the same fingerprint",
				r.URL, r.Fingerprint, fl.Replicas[0].URL, fl.Replicas[0].Fingerprint)
		}
	}
	if names[f.admins[2]] != "gate-3" {
		t.Errorf("replica names %v: --replica-name not in force", names)
	}

	stale := f.admins[2]
	code, stdout, stderr := f.run(t, "ip-rules", "create", "db", "--cidr", "10.1.0.0/16", "--description", "office", "--wait", "3s")
	if code != exitWait || !strings.Contains(stdout, "status: authorizing (2/3; not yet: "+stale+")") || !strings.Contains(stderr, stale) {
		t.Fatalf("create with a stale replica: exit %d, want 3\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	id := ""
	for line := range strings.Lines(stdout) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "id: "); ok {
			id = v
		}
	}

	fl = f.fleet(t, 1)
	if fl.InSync {
		t.Fatalf("/v1/fleet in sync with a stale replica: %+v", fl)
	}
	var named bool
	for _, d := range fl.Differs {
		if d.What == admin.DiffRules && d.Route == "db" && len(d.Values) == 2 && strings.Contains(d.Text, stale) {
			for _, urls := range d.Values {
				named = named || (len(urls) == 1 && urls[0] == stale)
			}
		}
	}
	if !named {
		t.Errorf("/v1/fleet does not name the stale replica's rules of db: %+v", fl.Differs)
	}

	out := f.mustRun(t, "status")
	if !strings.Contains(out, "DRIFT") || !strings.Contains(out, "rules of db") || !strings.Contains(out, "differs: route db: rules") {
		t.Errorf("status does not mark the drift:\n%s", out)
	}
	var rep statusReport
	f.mustJSON(t, &rep, "status")
	if rep.Fleet == nil || rep.Fleet.InSync || len(rep.Fleet.Replicas) != 3 {
		t.Errorf("status --json fleet: %+v", rep.Fleet)
	}

	copyFile(t, f.path("rules", "db.yaml"), f.rules3)
	code, stdout, stderr = f.run(t, "ip-rules", "get", "db", "--id", id, "--wait", "5s")
	if code != exitOK || !strings.Contains(stdout, "status: authorized (3/3 replicas)") {
		t.Errorf("get once the file is copied: exit %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	var v ruleView
	f.mustJSON(t, &v, "ip-rules", "get", "db", "--id", id)
	if v.Status != ruleAuthorized || v.Replicas == nil || v.Replicas.Served != 3 || v.Replicas.Total != 3 {
		t.Errorf("get --json: %+v, replicas %+v", v, v.Replicas)
	}
	f.awaitInSync(t, "after the copy")

	// delete: the stale replica keeps the rule until its copy follows.
	code, stdout, _ = f.run(t, "ip-rules", "delete", "db", "--id", id, "--wait", "1s")
	if code != exitWait || !strings.Contains(stdout, "status: deleting (2/3; not yet: "+stale+")") {
		t.Errorf("delete with a stale replica: exit %d\n%s", code, stdout)
	}
}

// TestFleetStaleCRL: a revocation is confirmed only when every replica has
// the new CRL: `certs revoke --wait` exits 3 naming the replica on the old
// one, and the fleet is back in sync once it has the file.
func TestFleetStaleCRL(t *testing.T) {
	f := newFleetEnv(t)
	f.awaitInSync(t, "at start")
	c := f.createCert(t, "db")
	stale := f.admins[2]
	code, stdout, stderr := f.run(t, "certs", "revoke", "db", "--id", c.ID, "--wait", "3s")
	if code != exitWait || !strings.Contains(stdout, "status: revoking (2/3; not yet: "+stale+")") || !strings.Contains(stderr, stale) {
		t.Fatalf("revoke with a replica on the old CRL: exit %d, want 3\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	fl := f.fleet(t, 0)
	var named bool
	for _, d := range fl.Differs {
		named = named || (d.What == admin.DiffCRL && d.Route == "db" && strings.Contains(d.Text, stale))
	}
	if fl.InSync || !named {
		t.Errorf("/v1/fleet with a replica on the old CRL: in_sync %v, differs %+v", fl.InSync, fl.Differs)
	}
	// Revoking it again writes nothing and asks the fleet again: still
	// not on the stale replica.
	crlBefore, err := os.ReadFile(f.path("pki", "ca.crl"))
	if err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = f.run(t, "certs", "revoke", "db", "--id", c.ID, "--wait", "0")
	if code != exitWait || !strings.Contains(stdout, "was already revoked at ") || !strings.Contains(stdout, "status: revoking (2/3; not yet: "+stale+")") {
		t.Errorf("revoke again before the copy: exit %d, want 3\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	copyFile(t, f.path("pki", "ca.crl"), f.crl3)
	// Revoking it again is how an operator confirms the copy.
	code, stdout, stderr = f.run(t, "certs", "revoke", "db", "--id", c.ID, "--wait", "10s")
	if code != exitOK || !strings.Contains(stdout, "was already revoked at ") || !strings.Contains(stdout, "status: revoked (3/3 replicas)") {
		t.Errorf("revoke again after the copy: exit %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if crlAfter, err := os.ReadFile(f.path("pki", "ca.crl")); err != nil || string(crlAfter) != string(crlBefore) {
		t.Errorf("revoking again changed the CRL (%v)", err)
	}
	fl = f.awaitInSync(t, "after the CRL was copied")
	want, err := crlNumbers(f.path("pki", "ca.crl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range fl.Replicas {
		if !servesCRLs(r, "db", want) {
			t.Errorf("replica %s: CRLs %+v, want numbers %v", r.URL, r.Routes["db"].CRLs, want)
		}
	}
	// A second revocation reaches all three at once.
	c2 := f.createCert(t, "db")
	before, err := os.ReadFile(f.path("pki", "ca.crl"))
	if err != nil {
		t.Fatal(err)
	}
	copyDone := make(chan struct{})
	go func() {
		defer close(copyDone)
		// Replica 3's copy follows the source as rsync would, while the
		// command waits.
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if now, _ := os.ReadFile(f.path("pki", "ca.crl")); string(now) != string(before) {
				data := now
				tmp := f.crl3 + ".tmp"
				if os.WriteFile(tmp, data, 0o644) == nil {
					_ = os.Rename(tmp, f.crl3)
				}
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	code, stdout, stderr = f.run(t, "certs", "revoke", "db", "--id", c2.ID, "--wait", "5s")
	<-copyDone
	if code != exitOK || !strings.Contains(stdout, "status: revoked (3/3 replicas)") {
		t.Errorf("revoke with the copy following: exit %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
}
