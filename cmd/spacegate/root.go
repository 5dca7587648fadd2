package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes, the same for every command.
const (
	exitOK    = 0
	exitError = 1 // a user error: bad config, unreachable file, refused action
	exitUsage = 2 // bad flags or arguments
	// exitWait (3, fleetwait.go): the change was made, but --wait ended
	// before every replica served it.
)

// usageError marks an error as bad usage (exit 2) rather than a failure.
type usageError struct{ error }

// run executes the command line args and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "spacegate: %v\n", err)
	var he hintError
	if errors.As(err, &he) {
		fmt.Fprintf(stderr, "hint: %s\n", he.hint)
	}
	var we waitError
	if errors.As(err, &we) {
		return exitWait
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "run 'spacegate help' for usage")
		return exitUsage
	}
	return exitError
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "spacegate",
		Short:         "mTLS edge gate for private PostgreSQL and Redis servers",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Unknown subcommands and bad args are usage errors, not failures.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q", args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newServeCmd(),
		newCheckCmd(),
		newQuickstartCmd(),
		newCACmd(),
		newCertsCmd(),
		newIPRulesCmd(),
		newVersionCmd(),
		newStatusCmd(),
	)
	return root
}

// configPath returns the --config flag, else $SPACEGATE_CONFIG, else ./spacegate.yaml.
func configPath(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("SPACEGATE_CONFIG"); env != "" {
		return env
	}
	return "spacegate.yaml"
}

// noArgs is cobra.NoArgs returning a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args)}
	}
	return nil
}
