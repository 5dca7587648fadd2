package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// TestFleetCARotation: `ca rotate --wait` and `ca prune --wait` are
// confirmed only when every replica trusts the new bundle. Replica 3 keeps
// its old copy of ca.crt (and ca.crl): both exit 3 naming it, and once
// the files are copied `ca check --wait` exits 0 with 3/3.
func TestFleetCARotation(t *testing.T) {
	f := newFleetEnv(t)
	f.awaitInSync(t, "at start")
	stale := f.admins[2]

	code, stdout, stderr := f.run(t, "ca", "rotate", "--wait", "3s")
	if code != exitWait || !strings.Contains(stdout, "status: trusting (2/3; not yet: "+stale+")") || !strings.Contains(stderr, stale) {
		t.Fatalf("rotate with a replica on the old bundle: exit %d, want 3\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	var v bundleView
	f.mustJSONCode(t, exitWait, &v, "ca", "check")
	if v.Status != bundleTrusting || v.Replicas == nil || v.Replicas.Served != 2 || v.Replicas.Total != 3 ||
		len(v.Replicas.NotYet) != 1 || v.Replicas.NotYet[0] != stale || len(v.Bundle) != 2 {
		t.Errorf("check --json before the copy: %+v, replicas %+v", v, v.Replicas)
	}
	// The bundle first, then the CRLs: a CRL of a CA not in the bundle is
	// a config error (ca rotate writes them in this order too).
	copyFile(t, f.path("pki", "ca.crt"), f.ca3)
	copyFile(t, f.path("pki", "ca.crl"), f.crl3)
	code, stdout, stderr = f.run(t, "ca", "check", "--wait", "10s")
	if code != exitOK || !strings.Contains(stdout, "status: trusted (3/3 replicas)") {
		t.Fatalf("check once the files are copied: exit %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	f.awaitInSync(t, "after the rotation was copied")

	// Prune: replica 3 keeps trusting the old CA beside the new one.
	code, stdout, stderr = f.run(t, "ca", "prune", "--force", "--wait", "3s")
	if code != exitWait || !strings.Contains(stdout, "status: pruning (2/3; not yet: "+stale+")") || !strings.Contains(stderr, stale) {
		t.Fatalf("prune with a replica on the old bundle: exit %d, want 3\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	// The CRLs first, then the bundle, as ca prune writes them.
	copyFile(t, f.path("pki", "ca.crl"), f.crl3)
	copyFile(t, f.path("pki", "ca.crt"), f.ca3)
	f.mustJSON(t, &v, "ca", "check", "--wait", "10s")
	if v.Status != bundleTrusted || v.Replicas == nil || v.Replicas.Served != 3 || v.Replicas.Total != 3 || len(v.Bundle) != 1 {
		t.Errorf("check --json once the pruned files are copied: %+v, replicas %+v", v, v.Replicas)
	}
	// Prune again: nothing left to remove, and every replica trusts the
	// bundle as it is.
	code, stdout, stderr = f.run(t, "ca", "prune", "--wait", "5s")
	if code != exitOK || !strings.Contains(stdout, "nothing to prune") || !strings.Contains(stdout, "status: trusted (3/3 replicas)") {
		t.Errorf("prune with nothing left: exit %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}

	// A second rotation, whose prune reaches all three: replica 3's copies
	// follow the source as rsync would, while the command waits.
	f.mustRunCode(t, exitWait, "ca", "rotate", "--wait", "0") // replica 3 is behind until copied
	copyFile(t, f.path("pki", "ca.crt"), f.ca3)
	copyFile(t, f.path("pki", "ca.crl"), f.crl3)
	f.mustRun(t, "ca", "check", "--wait", "10s")
	before, err := os.ReadFile(f.path("pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	copyDone := make(chan struct{})
	go func() {
		defer close(copyDone)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			// ca.crt is written last; copy in the order ca prune writes.
			if now, _ := os.ReadFile(f.path("pki", "ca.crt")); len(now) > 0 && !bytes.Equal(now, before) {
				for _, p := range [][2]string{{f.path("pki", "ca.crl"), f.crl3}, {f.path("pki", "ca.crt"), f.ca3}} {
					if data, err := os.ReadFile(p[0]); err == nil && os.WriteFile(p[1]+".tmp", data, 0o644) == nil {
						_ = os.Rename(p[1]+".tmp", p[1])
					}
				}
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	var pv pruneView
	code, stdout, stderr = f.run(t, "ca", "prune", "--json", "--wait", "10s")
	<-copyDone
	if err := json.Unmarshal([]byte(stdout), &pv); err != nil || code != exitOK || pv.Status != bundlePruned || len(pv.Removed) != 1 ||
		pv.Replicas == nil || pv.Replicas.Served != 3 || pv.Replicas.Total != 3 || len(pv.Replicas.NotYet) != 0 {
		t.Errorf("prune with the copy following: exit %d, want 0, %+v, replicas %+v (%v)\nstdout: %s\nstderr: %s", code, pv, pv.Replicas, err, stdout, stderr)
	}
	// Its words, once the fleet is there.
	out := f.mustRun(t, "ca", "check")
	if !strings.Contains(out, "status: trusted (3/3 replicas)") {
		t.Errorf("check after the second prune:\n%s", out)
	}
}
