package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// timeLayout is how times are shown to people, as the managed platform's
// CLI shows them: "2019-07-17 00:05:52 +0000". JSON output uses RFC 3339.
const timeLayout = "2006-01-02 15:04:05 -0700"

func showTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(timeLayout)
}

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newTable returns a writer that aligns tab-separated columns; call Flush.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
}

// row writes cells as one tab-separated table row.
func row(w io.Writer, cells ...string) {
	fmt.Fprintln(w, strings.Join(cells, "\t"))
}

// hintError is a user error (exit 1) with a hint on how to fix it, which
// run prints on a line of its own after the reason.
type hintError struct {
	error
	hint string
}

func (e hintError) Unwrap() error { return e.error }

// withHint adds a hint to err.
func withHint(err error, format string, args ...any) error {
	return hintError{err, fmt.Sprintf(format, args...)}
}

// exactArgs is cobra.ExactArgs returning a usage error that names the
// arguments wanted.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %s, got %d argument(s)", cmd.CommandPath(), names, len(args))}
		}
		return nil
	}
}

// maxArgs is cobra.MaximumNArgs returning a usage error.
func maxArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > n {
			return usageError{fmt.Errorf("%s takes at most %s, got %d arguments", cmd.CommandPath(), names, len(args))}
		}
		return nil
	}
}

// requireFlags returns a usage error naming the flags among names that were
// not given.
func requireFlags(cmd *cobra.Command, names ...string) error {
	var missing []string
	for _, n := range names {
		if !cmd.Flags().Changed(n) {
			missing = append(missing, "--"+n)
		}
	}
	if len(missing) > 0 {
		return usageError{fmt.Errorf("%s needs %s", cmd.CommandPath(), strings.Join(missing, " and "))}
	}
	return nil
}

// newGroupCmd returns a command that only holds subcommands: alone it shows
// its help, and an unknown subcommand is a usage error.
func newGroupCmd(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q for %s", args[0], cmd.CommandPath())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(subs...)
	return cmd
}

// configFlag adds the --config flag shared by every command.
func configFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVar(p, "config", "", "config file (default $SPACEGATE_CONFIG or ./spacegate.yaml)")
}
