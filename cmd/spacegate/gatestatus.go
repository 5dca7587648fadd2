package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/spacegate/spacegate/proxy"
)

// Rule states shown by ip-rules, as the managed platform names them.
const (
	ruleAuthorizing = "authorizing" // written, not yet in force in the running gate
	ruleAuthorized  = "authorized"  // in force
	ruleDeleting    = "deleting"    // deleted from the file, still in force
	ruleDeleted     = "deleted"     // gone from the file and the gate
	ruleUnreachable = "unknown: gate not reachable"
	ruleNoAdmin     = "unknown: no admin.listen in the config"
)

// statusTimeout bounds one query of the admin endpoint: a gate that does
// not answer in a second is reported as not reachable.
const statusTimeout = time.Second

// gateRules is what the running gate has in force, by route: the rule ids
// of /v1/status. A nil gateRules means the gate could not be asked, and
// why is in unknown.
type gateRules struct {
	byRoute map[string][]string
	unknown string
}

// fetchGateRules asks the admin endpoint at base for the rules in force.
func fetchGateRules(ctx context.Context, base string) gateRules {
	if base == "" {
		return gateRules{unknown: ruleNoAdmin}
	}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	st, err := fetchStatus(ctx, base)
	if err != nil {
		return gateRules{unknown: ruleUnreachable}
	}
	g := gateRules{byRoute: map[string][]string{}}
	for _, r := range st.Routes {
		g.byRoute[r.Name] = r.RuleIDs
	}
	return g
}

func fetchStatus(ctx context.Context, base string) (*proxy.Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s/v1/status: %s", base, resp.Status)
	}
	var st proxy.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("%s/v1/status: %w", base, err)
	}
	return &st, nil
}

// status returns the state of rule id of route for a rule that exists in
// the rules file.
func (g gateRules) status(route, id string) string {
	if g.unknown != "" {
		return g.unknown
	}
	if slices.Contains(g.byRoute[route], id) {
		return ruleAuthorized
	}
	return ruleAuthorizing
}

// deletedStatus returns the state of rule id of route after it was removed
// from the rules file.
func (g gateRules) deletedStatus(route, id string) string {
	if g.unknown != "" {
		return g.unknown
	}
	if slices.Contains(g.byRoute[route], id) {
		return ruleDeleting
	}
	return ruleDeleted
}

// awaitRule polls the gate until want(status) holds or wait passes, and
// returns the last status. It does not wait when the gate cannot be asked.
func awaitRule(ctx context.Context, base string, wait time.Duration, status func(gateRules) string, want string) string {
	deadline := time.Now().Add(wait)
	for {
		g := fetchGateRules(ctx, base)
		st := status(g)
		if st == want || g.unknown != "" || time.Now().After(deadline) {
			return st
		}
		select {
		case <-ctx.Done():
			return st
		case <-time.After(100 * time.Millisecond):
		}
	}
}
