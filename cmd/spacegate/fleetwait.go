package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spacegate/spacegate/admin"
)

// exitWait is the exit code of a command whose change was made but that
// stopped waiting before every replica served it (--wait), or could not
// ask them.
const exitWait = 3

// waitError ends a command with exitWait: what it printed is true, but not
// yet everywhere.
type waitError struct{ error }

// Defaults of --wait. A change waits a little for the replicas to reload
// (a rules file reloads in well under a second where the file is local;
// a Kubernetes ConfigMap takes up to a minute and a half, so scripts pass
// more); `ip-rules get` checks once.
const (
	changeWait = 2 * time.Second
	checkWait  = 0
)

// fleetPollInterval is how often a --wait asks /v1/fleet again.
const fleetPollInterval = 200 * time.Millisecond

// waitFlag adds --wait to cmd.
func waitFlag(cmd *cobra.Command, p *time.Duration, def time.Duration) {
	cmd.Flags().DurationVar(p, "wait", def,
		"how long to wait for every replica of admin.fleet to serve the change; 0 checks once. Exit 3 when the wait ends first")
}

// fleetProgress is how many replicas serve a change, and which do not yet.
type fleetProgress struct {
	Served int      `json:"served"`
	Total  int      `json:"total"`
	NotYet []string `json:"not_yet"` // replica URLs; " (not reachable)" after those that did not answer
}

// done reports whether every replica serves the change.
func (p fleetProgress) done() bool { return p.Total > 0 && p.Served == p.Total }

// describe says p for people: "authorized (3/3 replicas)", or
// "authorizing (2/3; not yet: http://10.0.0.13:9187)".
func (p fleetProgress) describe(doneState, pendingState string) string {
	if p.done() {
		return fmt.Sprintf("%s (%d/%d replicas)", doneState, p.Served, p.Total)
	}
	return fmt.Sprintf("%s (%d/%d; not yet: %s)", pendingState, p.Served, p.Total, strings.Join(p.NotYet, ", "))
}

// progressOf counts the replicas of f for which served holds; one that
// did not answer counts as not yet.
func progressOf(f admin.Fleet, served func(admin.Replica) bool) fleetProgress {
	p := fleetProgress{Total: len(f.Replicas), NotYet: []string{}}
	for _, r := range f.Replicas {
		switch {
		case !r.Reachable:
			p.NotYet = append(p.NotYet, r.URL+" (not reachable)")
		case served(r):
			p.Served++
		default:
			p.NotYet = append(p.NotYet, r.URL)
		}
	}
	return p
}

// fetchFleet asks the gate for /v1/fleet; a gate older than it is a fleet
// of one, from its /v1/status.
func fetchFleet(ctx context.Context, gate gateAdmin) (admin.Fleet, error) {
	body, err := gate.get(ctx, "/v1/fleet")
	if errors.Is(err, errNotFound) {
		st, err := fetchStatus(ctx, gate)
		if err != nil {
			return admin.Fleet{}, err
		}
		return admin.Compare([]admin.Replica{admin.NewReplica(gate.base, *st)}), nil
	}
	if err != nil {
		return admin.Fleet{}, err
	}
	var f admin.Fleet
	if err := json.Unmarshal(body, &f); err != nil {
		return admin.Fleet{}, fmt.Errorf("%s/v1/fleet: %w", gate.base, err)
	}
	return f, nil
}

// fleetWait is the outcome of awaitFleet: the progress of the last look,
// or why the fleet could not be asked (one of the rule* unknown states).
type fleetWait struct {
	progress fleetProgress
	unknown  string
}

// awaitFleet asks the gate's /v1/fleet until served holds on every
// replica or wait has passed (0: once). It does not wait when there is no
// admin endpoint, when the gate refuses the token, or when the gate asked
// does not answer at all: nothing would change that.
func awaitFleet(ctx context.Context, gate gateAdmin, wait time.Duration, served func(admin.Replica) bool) fleetWait {
	if gate.base == "" {
		return fleetWait{unknown: ruleNoAdmin}
	}
	deadline := time.Now().Add(wait)
	for {
		qctx, cancel := context.WithTimeout(ctx, admin.FleetTimeout+time.Second)
		f, err := fetchFleet(qctx, gate)
		cancel()
		switch {
		case errors.Is(err, errAdminToken):
			return fleetWait{unknown: ruleNoToken}
		case err != nil:
			return fleetWait{unknown: ruleUnreachable}
		}
		p := progressOf(f, served)
		if p.done() || !time.Now().Before(deadline) {
			return fleetWait{progress: p}
		}
		select {
		case <-ctx.Done():
			return fleetWait{progress: p}
		case <-time.After(fleetPollInterval):
		}
	}
}

// state says w for people, with doneState and pendingState for the
// change (authorized/authorizing, deleted/deleting, revoked/revoking).
func (w fleetWait) state(doneState, pendingState string) string {
	if w.unknown != "" {
		return w.unknown
	}
	return w.progress.describe(doneState, pendingState)
}

// replicas returns the progress for --json, nil when unknown.
func (w fleetWait) replicas() *fleetProgress {
	if w.unknown != "" {
		return nil
	}
	return &w.progress
}

// err returns nil when every replica serves the change, or when there is
// no admin endpoint to ask (the command only writes files then); else a
// waitError naming the replicas not there yet.
func (w fleetWait) err(what string, wait time.Duration) error {
	switch {
	case w.unknown == ruleNoAdmin || (w.unknown == "" && w.progress.done()):
		return nil
	case w.unknown != "":
		return waitError{fmt.Errorf("%s: not known to be in force: %s", what, strings.TrimPrefix(w.unknown, "unknown: "))}
	case wait == 0:
		return waitError{fmt.Errorf("%s: not yet on every replica (%d/%d); not yet: %s",
			what, w.progress.Served, w.progress.Total, strings.Join(w.progress.NotYet, ", "))}
	}
	return waitError{fmt.Errorf("%s: not on every replica after %s (%d/%d); not yet: %s",
		what, wait, w.progress.Served, w.progress.Total, strings.Join(w.progress.NotYet, ", "))}
}

// hasRule reports whether replica r has rule id in force on route.
func hasRule(r admin.Replica, route, id string) bool {
	return slices.ContainsFunc(r.Routes[route].RuleIDs, func(s string) bool { return strings.EqualFold(s, id) })
}
