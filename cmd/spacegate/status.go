package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spacegate/spacegate/admin"
	"github.com/spacegate/spacegate/config"
)

// statusQueryTimeout bounds the request of `spacegate status` to the
// admin endpoint. It is longer than ip-rules' second: status is run by a
// person, often over a tunnel, and a busy gate's list of live connections
// can be large.
const statusQueryTimeout = 5 * time.Second

// expiringWithin is when a certificate counts as expiring, the same 75 days
// as `certs list` and the Prometheus alerts.
const expiringWithin = 75 * 24 * time.Hour

// statusExpiries is how many of the nearest certificate expiries the table
// shows; --json lists them all.
const statusExpiries = 10

// statusReport is what `spacegate status --json` prints: the gate's
// /v1/status, with the admin endpoint it came from.
type statusReport struct {
	Admin string `json:"admin"`
	admin.Status
	// Fleet is /v1/fleet of the gate asked: every replica of admin.fleet
	// (this one alone without it); nil when it could not be had.
	Fleet *admin.Fleet `json:"fleet,omitempty"`

	olderGate bool // its /v1/status has no cert_expiries: they were pieced together
}

type statusFlags struct {
	config    string
	admin     string
	tokenFile string
	json      bool
}

func newStatusCmd() *cobra.Command {
	var f statusFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running gate and its fleet: replicas, routes, rules in force, live connections, certificate expiries",
		Long: "Ask the running gate's admin endpoint (admin.listen of the config, or --admin URL) for its routes,\n" +
			"the IP rules in force, live connections and the nearest certificate expiries, and for every replica of\n" +
			"admin.fleet (/v1/fleet): one row each, with its fingerprint and what differs (DRIFT).\n" +
			"The admin token is read from --admin-token-file, else $" + adminTokenEnv + ", else admin.token_file of the config.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStatus(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	configFlag(cmd, &f.config)
	cmd.Flags().StringVar(&f.admin, "admin", "", "admin endpoint of the running gate, such as http://127.0.0.1:9187 (default from admin.listen)")
	adminTokenFlag(cmd, &f.tokenFile)
	cmd.Flags().BoolVar(&f.json, "json", false, "print JSON")
	return cmd
}

func runStatus(ctx context.Context, w io.Writer, f statusFlags) error {
	base, cfg, err := statusAdminURL(f)
	if err != nil {
		return err
	}
	gate, err := newGateAdmin(base, f.tokenFile, cfg)
	if err != nil {
		return err
	}
	rep, err := queryStatus(ctx, gate)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, statusQueryTimeout)
	if fl, err := fetchFleet(fctx, gate); err == nil {
		rep.Fleet = &fl
	}
	cancel()
	if f.json {
		return writeJSON(w, rep)
	}
	return writeStatus(w, rep, time.Now())
}

// statusAdminURL returns the base URL of the admin endpoint: --admin, else
// admin.listen of the config, which it returns too (nil with --admin).
func statusAdminURL(f statusFlags) (string, *config.Config, error) {
	if f.admin != "" {
		u := strings.TrimSuffix(f.admin, "/")
		if !strings.Contains(u, "://") {
			u = "http://" + u
		}
		return u, nil, nil
	}
	path := configPath(f.config)
	cfg, err := config.Load(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil, withHint(err, "pass the gate's admin endpoint with --admin URL, or its config with --config FILE")
		}
		return "", nil, problemsError(err)
	}
	base := adminURLFromListen(cfg.Admin.Listen)
	if base == "" {
		return "", nil, withHint(fmt.Errorf("%s has no admin.listen, so the gate has no admin endpoint to ask", path),
			"set admin.listen (such as 127.0.0.1:9187) and reload the gate, or pass --admin URL")
	}
	return base, cfg, nil
}

// queryStatus reads /v1/status of the gate.
func queryStatus(ctx context.Context, gate gateAdmin) (*statusReport, error) {
	body, err := adminGet(ctx, gate, "/v1/status")
	if errors.Is(err, errAdminToken) {
		return nil, err
	}
	if err != nil {
		return nil, withHint(fmt.Errorf("gate not reachable: %w", err),
			"is `spacegate serve` running? pass its admin endpoint with --admin URL (admin.listen)")
	}
	rep := &statusReport{Admin: gate.base}
	if err := json.Unmarshal(body, &rep.Status); err != nil {
		return nil, fmt.Errorf("%s/v1/status: decoding the gate's answer: %w", gate.base, err)
	}
	if rep.Routes == nil {
		rep.Routes = []admin.RouteStatus{}
	}
	if rep.Connections == nil {
		rep.Connections = []admin.Conn{}
	}
	if rep.CertExpiries == nil {
		// A gate older than cert_expiries: what the rest of its status
		// knows, the server certificates and the live clients.
		rep.CertExpiries = []admin.CertExpiry{}
		for _, r := range rep.Routes {
			if !r.ServerCertNotAfter.IsZero() {
				rep.addExpiry(admin.CertExpiry{Kind: admin.CertServer, Route: r.Name, NotAfter: r.ServerCertNotAfter})
			}
		}
		for _, c := range rep.Connections {
			if !c.CertNotAfter.IsZero() {
				rep.addExpiry(admin.CertExpiry{Kind: admin.CertClient, Route: c.Route, Subject: c.CertSubject, NotAfter: c.CertNotAfter})
			}
		}
		rep.olderGate = true
	}
	admin.SortCertExpiries(rep.CertExpiries)
	return rep, nil
}

// adminGet returns the body of path on the admin endpoint, within
// statusQueryTimeout.
func adminGet(ctx context.Context, admin gateAdmin, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, statusQueryTimeout)
	defer cancel()
	return admin.get(ctx, path)
}

// addExpiry adds e unless the report has it already.
func (rep *statusReport) addExpiry(e admin.CertExpiry) {
	if slices.Contains(rep.CertExpiries, e) {
		return
	}
	rep.CertExpiries = append(rep.CertExpiries, e)
}

// writeStatus prints rep as tables for people.
func writeStatus(w io.Writer, rep *statusReport, now time.Time) error {
	ready := "yes"
	if !rep.Ready {
		ready = "no (starting or draining)"
	}
	fmt.Fprintf(w, "gate %s  generation %d  loaded %s  ready %s\n", rep.Admin, rep.Generation, showTime(rep.LoadedAt), ready)
	if err := writeFleet(w, rep.Fleet); err != nil {
		return err
	}

	fmt.Fprintln(w)
	tw := newTable(w)
	row(tw, "ROUTE", "PROTOCOL", "LISTEN", "ENABLED", "UPSTREAM", "IP RULES", "LIVE")
	for _, r := range rep.Routes {
		row(tw, r.Name, r.Protocol, r.Listen, yesNo(r.Enabled), upstreamCell(r, now),
			fmt.Sprintf("%d/%d", r.Rules, r.MaxIPRules), strconv.Itoa(r.Active))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nIP rules in force:")
	tw = newTable(w)
	row(tw, "ROUTE", "RULE IDS")
	for _, r := range rep.Routes {
		ids := "(none: nobody is allowed)"
		if len(r.RuleIDs) > 0 {
			ids = strings.Join(r.RuleIDs, " ")
		}
		row(tw, r.Name, ids)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if len(rep.Connections) == 0 {
		fmt.Fprintln(w, "\nLive connections: none")
	} else {
		fmt.Fprintf(w, "\nLive connections (%d):\n", len(rep.Connections))
		tw = newTable(w)
		row(tw, "ROUTE", "SOURCE", "SINCE", "USER", "DATABASE", "CERT SERIAL", "CERT SUBJECT")
		for _, c := range rep.Connections {
			row(tw, c.Route, c.Source, showTime(c.Since), dash(c.User), dash(c.Database), dash(c.CertSerial), dash(c.CertSubject))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	fmt.Fprintln(w, "\nNearest certificate expiries:")
	tw = newTable(w)
	row(tw, "EXPIRES", "IN", "STATE", "KIND", "ROUTE", "SUBJECT")
	for i, e := range rep.CertExpiries {
		if i == statusExpiries {
			break
		}
		row(tw, showTime(e.NotAfter), untilText(e.NotAfter.Sub(now)), expiryState(e.NotAfter, now), e.Kind, e.Route, dash(e.Subject))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if n := len(rep.CertExpiries) - statusExpiries; n > 0 {
		fmt.Fprintf(w, "(and %d more; --json lists them all)\n", n)
	}
	if rep.olderGate {
		fmt.Fprintf(w, "note: %s/v1/status lists no cert_expiries (a gate older than this spacegate): CA certificates and clients not connected now are missing\n", rep.Admin)
	}
	return nil
}

// writeFleet prints one row per replica: reachable, fingerprint, when it
// loaded, and what it differs in from the most replicas; then what differs
// in full. Drift is marked in capitals, as the alert names it.
func writeFleet(w io.Writer, f *admin.Fleet) error {
	if f == nil {
		fmt.Fprintln(w, "\nFleet: unknown (the gate did not answer /v1/fleet)")
		return nil
	}
	verdict := "in sync"
	if !f.InSync {
		verdict = "DRIFT: the replicas do not serve the same content"
	}
	noun := "replicas"
	if len(f.Replicas) == 1 {
		noun = "replica"
	}
	fmt.Fprintf(w, "\nFleet (%d %s): %s\n", len(f.Replicas), noun, verdict)
	odd := oddOnes(f.Differs)
	tw := newTable(w)
	row(tw, "", "REPLICA", "NAME", "REACHABLE", "FINGERPRINT", "LOADED", "DIFFERS")
	for _, r := range f.Replicas {
		mark, reach, differs := " ", "yes", dash(strings.Join(odd[r.URL], "; "))
		if !r.Reachable {
			mark, reach, differs = "!", "NO", r.Error
		} else if len(odd[r.URL]) > 0 {
			mark = "!"
		}
		row(tw, mark, r.URL, dash(r.Name), reach, dash(r.Fingerprint), showTime(r.LoadedAt), differs)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, d := range f.Differs {
		if d.What != admin.DiffUnreachable {
			fmt.Fprintf(w, "differs: %s\n", d.Text)
		}
	}
	return nil
}

// oddOnes returns, per replica URL, the things it differs in from the
// largest group of replicas (ties: the value that sorts first).
func oddOnes(ds []admin.Difference) map[string][]string {
	out := map[string][]string{}
	for _, d := range ds {
		if d.What == admin.DiffUnreachable {
			continue
		}
		values := slices.Sorted(maps.Keys(d.Values))
		if len(values) == 0 {
			continue
		}
		major := values[0]
		for _, v := range values[1:] {
			if len(d.Values[v]) > len(d.Values[major]) {
				major = v
			}
		}
		what := d.What
		switch {
		case d.What == admin.DiffCRL:
			what = "CRL of " + d.Issuer + " on " + d.Route
		case d.Route != "":
			what = d.What + " of " + d.Route
		}
		for v, urls := range d.Values {
			if v == major {
				continue
			}
			for _, u := range urls {
				out[u] = append(out[u], what)
			}
		}
	}
	return out
}

// upstreamCell says what is known of a route's upstream: the gate's own
// probe if it reports one, else how many clients it failed to reach it for.
func upstreamCell(r admin.RouteStatus, now time.Time) string {
	if u := r.Upstream; u != nil {
		ago := untilText(now.Sub(u.CheckedAt))
		if u.Reachable {
			return "up (checked " + ago + " ago)"
		}
		return "DOWN: " + u.Error + " (checked " + ago + " ago)"
	}
	if r.UpstreamUnavailable > 0 {
		return fmt.Sprintf("%d failed dial(s) since start", r.UpstreamUnavailable)
	}
	return "no failed dials"
}

// expiryState is how `certs list` names a certificate's state.
func expiryState(notAfter, now time.Time) string {
	switch {
	case !now.Before(notAfter):
		return "EXPIRED"
	case notAfter.Sub(now) < expiringWithin:
		return "expiring"
	}
	return "ok"
}

// untilText shows a duration in the largest whole unit that fits.
func untilText(d time.Duration) string {
	neg := d < 0
	if neg {
		d = -d
	}
	var s string
	switch {
	case d >= 48*time.Hour:
		s = strconv.Itoa(int(d/(24*time.Hour))) + "d"
	case d >= 2*time.Hour:
		s = strconv.Itoa(int(d/time.Hour)) + "h"
	case d >= 2*time.Minute:
		s = strconv.Itoa(int(d/time.Minute)) + "m"
	default:
		s = strconv.Itoa(int(d/time.Second)) + "s"
	}
	if neg {
		return "-" + s
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO (disabled)"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
