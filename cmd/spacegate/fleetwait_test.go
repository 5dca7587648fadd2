package main

import (
	"errors"
	"testing"
	"time"

	"github.com/spacegate/spacegate/admin"
)

// TestFleetProgress: a replica counts once it serves the change; one
// that did not answer counts as not yet, and is said to be unreachable.
func TestFleetProgress(t *testing.T) {
	fl := admin.Compare([]admin.Replica{
		{URL: "http://10.0.0.11:9187", Reachable: true, Fingerprint: "f", Routes: map[string]admin.ReplicaRoute{"db": {RuleIDs: []string{"ID-1"}}}},
		{URL: "http://10.0.0.12:9187", Reachable: true, Fingerprint: "f", Routes: map[string]admin.ReplicaRoute{"db": {RuleIDs: []string{}}}},
		{URL: "http://10.0.0.13:9187", Error: "no answer within 2s"},
	})
	p := progressOf(fl, func(r admin.Replica) bool { return hasRule(r, "db", "id-1") })
	if got, want := p.describe(ruleAuthorized, ruleAuthorizing),
		"authorizing (1/3; not yet: http://10.0.0.12:9187, http://10.0.0.13:9187 (not reachable))"; got != want {
		t.Errorf("describe = %q, want %q", got, want)
	}
	w := fleetWait{progress: p}
	var we waitError
	if err := w.err("rule id-1", 3*time.Second); !errors.As(err, &we) {
		t.Errorf("err = %v, want a waitError (exit 3)", err)
	}
	all := progressOf(fl, func(admin.Replica) bool { return true })
	if all.done() {
		t.Errorf("an unreachable replica counted as serving: %+v", all)
	}
	if err := (fleetWait{unknown: ruleNoAdmin}).err("rule", 0); err != nil {
		t.Errorf("no admin endpoint: %v, want nil (nothing to ask)", err)
	}
	one := progressOf(admin.Compare([]admin.Replica{fl.Replicas[0]}), func(r admin.Replica) bool { return hasRule(r, "db", "id-1") })
	if got := one.describe(ruleAuthorized, ruleAuthorizing); got != "authorized (1/1 replicas)" || (fleetWait{progress: one}).err("r", 0) != nil {
		t.Errorf("one replica serving: %q", got)
	}
}
