package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	sgadmin "github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/allowlist"
	"github.com/spacegate/spacegate/config"
)

// ipRulesFlags are the flags shared by the ip-rules commands.
type ipRulesFlags struct {
	config    string
	admin     string
	tokenFile string
	json      bool
	wait      time.Duration
}

func (f *ipRulesFlags) add(cmd *cobra.Command, withJSON bool) {
	configFlag(cmd, &f.config)
	cmd.Flags().StringVar(&f.admin, "admin", "", "admin endpoint of the running gate, to show rule status (default from admin.listen)")
	adminTokenFlag(cmd, &f.tokenFile)
	if withJSON {
		cmd.Flags().BoolVar(&f.json, "json", false, "print JSON")
	}
}

func newIPRulesCmd() *cobra.Command {
	return newGroupCmd("ip-rules", "Create, list, get and delete the IP rules of a route",
		newIPRulesCreateCmd(), newIPRulesListCmd(), newIPRulesGetCmd(), newIPRulesDeleteCmd())
}

func newIPRulesCreateCmd() *cobra.Command {
	var f ipRulesFlags
	var cidr, desc string
	cmd := &cobra.Command{
		Use:   "create ROUTE --cidr CIDR --description TEXT",
		Short: "Allow a CIDR block on a route",
		Long: "Add an IP rule to the route's rules file. A single address is written x.x.x.x/32.\n" +
			"The rule's id is derived from the route and the block, the same on every host.\n" +
			"The running gates reload the file; the rule shows \"authorizing (2/3; not yet: URL)\" until every\n" +
			"replica of admin.fleet has it in force, then \"authorized (3/3 replicas)\".\n" + exitCodesHelp,
		Args: exactArgs(1, "one argument, ROUTE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "cidr", "description"); err != nil {
				return err
			}
			return runIPRulesCreate(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f, args[0], cidr, desc)
		},
	}
	f.add(cmd, true)
	waitFlag(cmd, &f.wait, changeWait)
	cmd.Flags().StringVar(&cidr, "cidr", "", "the block to allow, such as 1.2.3.4/32 or 2001:db8::/48")
	cmd.Flags().StringVar(&desc, "description", "", "whose block it is, such as \"My Office IP\"")
	return cmd
}

func newIPRulesListCmd() *cobra.Command {
	var f ipRulesFlags
	cmd := &cobra.Command{
		Use:   "list ROUTE",
		Short: "List the IP rules of a route",
		Args:  exactArgs(1, "one argument, ROUTE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runIPRulesList(cmd.Context(), cmd.OutOrStdout(), f, args[0])
		},
	}
	f.add(cmd, true)
	return cmd
}

func newIPRulesGetCmd() *cobra.Command {
	return newIPRuleByIDCmd("get ROUTE --id ID", "Show one IP rule and whether every replica has it in force",
		"Show one IP rule of the route's rules file, and how many replicas of admin.fleet have it in force.\n"+exitCodesHelp,
		checkWait, runIPRulesGet)
}

func newIPRulesDeleteCmd() *cobra.Command {
	return newIPRuleByIDCmd("delete ROUTE --id ID", "Remove an IP rule from a route",
		"Remove an IP rule from the route's rules file. It shows \"deleting (1/3; not yet: URL)\" until no\n"+
			"replica of admin.fleet has it in force, then \"deleted (3/3 replicas)\".\n"+exitCodesHelp,
		changeWait, runIPRulesDelete)
}

// exitCodesHelp ends the help of the commands that wait for the fleet.
const exitCodesHelp = "\nExit status: 0 when every replica serves the change (or the config has no admin.listen to ask),\n" +
	"1 on an error, 2 on bad usage, 3 when --wait ended first or a replica could not be asked."

// newIPRuleByIDCmd is a command on one rule of a route, named by --id.
func newIPRuleByIDCmd(use, short, long string, wait time.Duration, run func(ctx context.Context, w io.Writer, f ipRulesFlags, route, id string) error) *cobra.Command {
	var f ipRulesFlags
	var id string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  exactArgs(1, "one argument, ROUTE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "id"); err != nil {
				return err
			}
			return run(cmd.Context(), cmd.OutOrStdout(), f, args[0], id)
		},
	}
	f.add(cmd, true)
	waitFlag(cmd, &f.wait, wait)
	cmd.Flags().StringVar(&id, "id", "", "the rule's id")
	return cmd
}

// ruleView is a rule as the ip-rules commands print it; the JSON keys and
// the text lines are those of the managed platform's CLI.
type ruleView struct {
	CIDR        string    `json:"cidr"`
	CreatedAt   time.Time `json:"created_at"`
	Description string    `json:"description"`
	ID          string    `json:"id"`
	Status      string    `json:"status"`
	UpdatedAt   time.Time `json:"updated_at"`
	Warning     string    `json:"warning,omitempty"` // create only: the block admits a whole address family
	// Replicas says how many replicas serve the change, for create, get
	// and delete; nil when the gate could not be asked.
	Replicas *fleetProgress `json:"replicas,omitempty"`

	statusText string // Status as printed: with the replicas
}

// viewRuleOnFleet is viewRule with the state of the rule on the fleet.
func viewRuleOnFleet(r allowlist.Rule, w fleetWait, doneState, pendingState string) ruleView {
	v := viewRule(r, w.unknown)
	if w.unknown == "" {
		v.Status = pendingState
		if w.progress.done() {
			v.Status = doneState
		}
	}
	v.statusText = w.state(doneState, pendingState)
	v.Replicas = w.replicas()
	return v
}

func viewRule(r allowlist.Rule, status string) ruleView {
	updated := r.UpdatedAt
	if updated.IsZero() {
		updated = r.CreatedAt
	}
	return ruleView{CIDR: r.CIDR.String(), CreatedAt: r.CreatedAt, Description: r.Description, ID: r.ID, Status: status, UpdatedAt: updated}
}

// print writes v as "key: value" lines, keys in alphabetical order.
func (v ruleView) print(w io.Writer) {
	fmt.Fprintf(w, "cidr: %s\ncreated_at: %s\ndescription: %s\nid: %s\nstatus: %s\nupdated_at: %s\n",
		v.CIDR, showTime(v.CreatedAt), v.Description, v.ID, cmp.Or(v.statusText, v.Status), showTime(v.UpdatedAt))
}

func (v ruleView) write(w io.Writer, asJSON bool) error {
	if asJSON {
		return writeJSON(w, v)
	}
	v.print(w)
	return nil
}

// ruleStore returns the rules store of a route.
// openRules loads the config and returns the named route and the store of
// its rules file.
func openRules(configFlag, routeName string) (*env, *config.Route, *allowlist.Store, error) {
	e, err := loadEnv(configFlag)
	if err != nil {
		return nil, nil, nil, err
	}
	route, err := e.route(routeName)
	if err != nil {
		return nil, nil, nil, err
	}
	return e, route, &allowlist.Store{Path: route.IPRulesFile, Route: route.Name, MaxRules: route.MaxIPRules}, nil
}

// seeRules adds the hint that lists a route's rules to err.
func seeRules(err error, routeName string) error {
	return withHint(err, "see the rules with: spacegate ip-rules list %s", routeName)
}

func runIPRulesCreate(ctx context.Context, w, ew io.Writer, f ipRulesFlags, routeName, cidrText, desc string) error {
	e, route, store, err := openRules(f.config, routeName)
	if err != nil {
		return err
	}
	admin, err := newGateAdmin(e.adminURL(f.admin), f.tokenFile, e.cfg)
	if err != nil {
		return err
	}
	cidr, err := parseRuleCIDR(cidrText)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(route.IPRulesFile), 0o755); err != nil {
		return err
	}
	rule, err := store.Create(ctx, cidr, desc)
	switch {
	case errors.Is(err, allowlist.ErrDuplicateCIDR):
		return seeRules(err, routeName)
	case errors.Is(err, allowlist.ErrTooManyRules):
		return withHint(fmt.Errorf("route %s already has %d IP rules, its max_ip_rules", routeName, route.MaxIPRules),
			"delete one with `spacegate ip-rules delete %s --id ID`, or raise max_ip_rules of the route in %s", routeName, e.path)
	case err != nil:
		return err
	}
	if err := audit(ctx, e.pkiDir, auditEntry{Action: "ip_rule.create", Route: routeName, ID: rule.ID, CIDR: rule.CIDR.String(), Description: desc}); err != nil {
		return err
	}
	fw := awaitFleet(ctx, admin, f.wait, func(r sgadmin.Replica) bool { return hasRule(r, routeName, rule.ID) })
	v := viewRuleOnFleet(rule, fw, ruleAuthorized, ruleAuthorizing)
	if v.Warning = familyWarning(cidrText, cidr, routeName); v.Warning != "" && !f.json {
		fmt.Fprintf(ew, "warning: %s\n", v.Warning)
	}
	if err := v.write(w, f.json); err != nil {
		return err
	}
	return fw.err("rule "+rule.ID, f.wait)
}

// familyWarning warns of a block that admits a whole address family, or
// returns "". The rule is still made: a route open to everyone with a
// certificate can be what is meant.
func familyWarning(written string, cidr netip.Prefix, routeName string) string {
	fam := allowlist.WholeFamily(cidr)
	if fam == "" {
		return ""
	}
	what := cidr.String()
	if written != what {
		what = fmt.Sprintf("%s (the %s block %s)", written, fam, cidr)
	}
	return fmt.Sprintf("%s admits every %s address: only the client certificate keeps strangers out of route %s", what, fam, routeName)
}

// parseRuleCIDR parses the --cidr of a new rule, with the fix as a hint.
func parseRuleCIDR(s string) (netip.Prefix, error) {
	cidr, err := allowlist.ParseCIDR(s)
	if err == nil {
		return cidr, nil
	}
	if a, aerr := netip.ParseAddr(s); aerr == nil && a.Zone() == "" {
		return netip.Prefix{}, withHint(fmt.Errorf("cidr %s has no prefix length", s), "did you mean --cidr %s?", netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	if p, perr := netip.ParsePrefix(s); perr == nil && p.Masked() != p {
		return netip.Prefix{}, withHint(fmt.Errorf("cidr %s has host bits set", s), "did you mean --cidr %s?", p.Masked())
	}
	return netip.Prefix{}, withHint(err, "a single address is written x.x.x.x/32 (IPv4) or x:x::x/128 (IPv6)")
}

func runIPRulesList(ctx context.Context, w io.Writer, f ipRulesFlags, routeName string) error {
	e, _, store, err := openRules(f.config, routeName)
	if err != nil {
		return err
	}
	admin, err := newGateAdmin(e.adminURL(f.admin), f.tokenFile, e.cfg)
	if err != nil {
		return err
	}
	rules, err := store.Load()
	if err != nil {
		return err
	}
	g := fetchGateRules(ctx, admin)
	views := []ruleView{}
	for _, r := range rules.Rules {
		views = append(views, viewRule(r, g.status(routeName, r.ID)))
	}
	if f.json {
		return writeJSON(w, views)
	}
	if len(views) == 0 {
		fmt.Fprintf(w, "route %s has no IP rules: nobody can connect\n", routeName)
		return nil
	}
	tw := newTable(w)
	row(tw, "id", "cidr", "status", "created_at", "description")
	for _, v := range views {
		row(tw, v.ID, v.CIDR, v.Status, showTime(v.CreatedAt), v.Description)
	}
	return tw.Flush()
}

func runIPRulesGet(ctx context.Context, w io.Writer, f ipRulesFlags, routeName, id string) error {
	e, _, store, err := openRules(f.config, routeName)
	if err != nil {
		return err
	}
	admin, err := newGateAdmin(e.adminURL(f.admin), f.tokenFile, e.cfg)
	if err != nil {
		return err
	}
	rule, err := store.Get(id)
	if errors.Is(err, allowlist.ErrRuleNotFound) {
		return seeRules(err, routeName)
	}
	if err != nil {
		return err
	}
	fw := awaitFleet(ctx, admin, f.wait, func(r sgadmin.Replica) bool { return hasRule(r, routeName, rule.ID) })
	if err := viewRuleOnFleet(rule, fw, ruleAuthorized, ruleAuthorizing).write(w, f.json); err != nil {
		return err
	}
	return fw.err("rule "+rule.ID, f.wait)
}

func runIPRulesDelete(ctx context.Context, w io.Writer, f ipRulesFlags, routeName, id string) error {
	e, _, store, err := openRules(f.config, routeName)
	if err != nil {
		return err
	}
	admin, err := newGateAdmin(e.adminURL(f.admin), f.tokenFile, e.cfg)
	if err != nil {
		return err
	}
	rule, err := store.Delete(ctx, id)
	if errors.Is(err, allowlist.ErrRuleNotFound) {
		return seeRules(err, routeName)
	}
	if err != nil {
		return err
	}
	if err := audit(ctx, e.pkiDir, auditEntry{Action: "ip_rule.delete", Route: routeName, ID: rule.ID, CIDR: rule.CIDR.String(), Description: rule.Description}); err != nil {
		return err
	}
	fw := awaitFleet(ctx, admin, f.wait, func(r sgadmin.Replica) bool { return !hasRule(r, routeName, rule.ID) })
	if err := viewRuleOnFleet(rule, fw, ruleDeleted, ruleDeleting).write(w, f.json); err != nil {
		return err
	}
	return fw.err("deleted rule "+rule.ID, f.wait)
}
