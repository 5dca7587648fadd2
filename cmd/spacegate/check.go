package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spacegate/spacegate/config"
	"github.com/spacegate/spacegate/proxy"
)

func newCheckCmd() *cobra.Command {
	var config string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Validate the config and every file it names; list all problems",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCheck(cmd.OutOrStdout(), configPath(config), asJSON)
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "config file (default $SPACEGATE_CONFIG or ./spacegate.yaml)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

type checkResult struct {
	Config   string   `json:"config"`
	OK       bool     `json:"ok"`
	Problems []string `json:"problems"`
	Warnings []string `json:"warnings"` // do not fail the check: a CRL past its nextUpdate, a rule for a whole address family
	Routes   []string `json:"routes,omitempty"`
}

// runCheck validates the config at path; it returns an error (exit 1) when
// there is any problem, after printing all of them.
func runCheck(w io.Writer, path string, asJSON bool) error {
	res := checkResult{Config: path, Problems: []string{}, Warnings: []string{}}
	snap, err := proxy.Check(path)
	if err == nil {
		for _, r := range snap.Routes {
			res.Routes = append(res.Routes, fmt.Sprintf("%s: %s %s -> %s, %d IP rules", r.Name, r.Protocol, r.Listen, r.Upstream, r.Matcher.Len()))
		}
		for _, c := range snap.StaleCRLs(time.Now()) {
			res.Warnings = append(res.Warnings, c.String())
		}
		res.Warnings = append(res.Warnings, snap.Warnings()...)
	}
	for _, p := range config.Problems(err) {
		res.Problems = append(res.Problems, p.Error())
	}
	res.OK = len(res.Problems) == 0
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else if res.OK {
		for _, warn := range res.Warnings {
			fmt.Fprintf(w, "warning: %s\n", warn)
		}
		fmt.Fprintf(w, "%s: OK\n", path)
		for _, r := range res.Routes {
			fmt.Fprintf(w, "  route %s\n", r)
		}
	} else {
		for _, p := range res.Problems {
			fmt.Fprintln(w, p)
		}
	}
	if !res.OK {
		return fmt.Errorf("%s: %d problem(s)", path, len(res.Problems))
	}
	return nil
}

// problemsError flattens a joined error into one message, a problem a line.
func problemsError(err error) error {
	ps := config.Problems(err)
	if len(ps) <= 1 {
		return err
	}
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = "  " + p.Error()
	}
	return fmt.Errorf("%d problems:\n%s", len(ps), strings.Join(lines, "\n"))
}
