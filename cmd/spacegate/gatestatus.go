package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/config"
)

// Rule states shown by ip-rules, as the managed platform names them.
const (
	ruleAuthorizing = "authorizing" // written, not yet in force in the running gate
	ruleAuthorized  = "authorized"  // in force
	ruleDeleting    = "deleting"    // deleted from the file, still in force
	ruleDeleted     = "deleted"     // gone from the file and the gate
	ruleUnreachable = "unknown: gate not reachable"
	ruleNoAdmin     = "unknown: no admin.listen in the config"
	ruleNoToken     = "unknown: the gate refused the admin token (pass --admin-token-file)"
)

// adminTokenEnv names the admin token file when --admin-token-file does not.
const adminTokenEnv = "SPACEGATE_ADMIN_TOKEN_FILE"

// gateAdmin is the running gate's admin endpoint as the CLI asks it.
type gateAdmin struct {
	base      string       // "" when the config has no admin.listen
	token     []byte       // sent as Authorization: Bearer; nil sends none
	tokenFile string       // where token came from, for messages
	client    *http.Client // nil means http.DefaultClient
}

// adminTokenFlag adds --admin-token-file to cmd.
func adminTokenFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVar(p, "admin-token-file", "", "file holding the gate's admin bearer token (default $"+adminTokenEnv+", else admin.token_file of the config)")
}

// newGateAdmin returns the endpoint at base with its token: the file of
// --admin-token-file, else of $SPACEGATE_ADMIN_TOKEN_FILE, else the
// config's admin.token_file (cfg may be nil). A token file that cannot be
// read is an error, before the command changes anything.
func newGateAdmin(base, flag string, cfg *config.Config) (gateAdmin, error) {
	g := gateAdmin{base: base}
	switch {
	case flag != "":
		g.tokenFile = flag
	case os.Getenv(adminTokenEnv) != "":
		g.tokenFile = os.Getenv(adminTokenEnv)
	case cfg != nil:
		g.tokenFile = cfg.Admin.TokenFile
	}
	if g.tokenFile == "" {
		return g, nil
	}
	tok, err := admin.ReadTokenFile(g.tokenFile)
	if err != nil {
		return g, withHint(fmt.Errorf("admin token: %w", err),
			"the file must hold the token of the gate's admin.token_file; pass it with --admin-token-file FILE or $%s", adminTokenEnv)
	}
	g.token = tok
	return g, nil
}

// errAdminToken is a 401 from the admin endpoint.
var errAdminToken = errors.New("the gate's admin endpoint wants its token")

// errNotFound is a 404 from the admin endpoint: a path an older gate does
// not serve.
var errNotFound = errors.New("not served by this gate")

// get returns the body of path, bounded to 64 MiB (far beyond a gate's
// /v1/status). A 401 is errAdminToken, with a hint to pass the token.
func (g gateAdmin) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.base+path, nil)
	if err != nil {
		return nil, err
	}
	if g.token != nil {
		req.Header.Set("Authorization", "Bearer "+string(g.token))
	}
	client := g.client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized && g.token == nil:
		return nil, withHint(fmt.Errorf("%s%s: %s: %w", g.base, path, resp.Status, errAdminToken),
			"pass the file of the gate's admin.token_file with --admin-token-file FILE or $%s", adminTokenEnv)
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, withHint(fmt.Errorf("%s%s: %s: the gate refused the admin token of %s: %w", g.base, path, resp.Status, g.tokenFile, errAdminToken),
			"is %s the file of the gate's admin.token_file, and did the gate reload since it changed?", g.tokenFile)
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("%s%s: %s: %w", g.base, path, resp.Status, errNotFound)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%s%s: %s", g.base, path, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s%s: %w", g.base, path, err)
	}
	return body, nil
}

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

// fetchGateRules asks the admin endpoint for the rules in force.
func fetchGateRules(ctx context.Context, gate gateAdmin) gateRules {
	if gate.base == "" {
		return gateRules{unknown: ruleNoAdmin}
	}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	st, err := fetchStatus(ctx, gate)
	if errors.Is(err, errAdminToken) {
		return gateRules{unknown: ruleNoToken}
	}
	if err != nil {
		return gateRules{unknown: ruleUnreachable}
	}
	g := gateRules{byRoute: map[string][]string{}}
	for _, r := range st.Routes {
		g.byRoute[r.Name] = r.RuleIDs
	}
	return g
}

func fetchStatus(ctx context.Context, gate gateAdmin) (*admin.Status, error) {
	body, err := gate.get(ctx, "/v1/status")
	if err != nil {
		return nil, err
	}
	var st admin.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("%s/v1/status: %w", gate.base, err)
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
