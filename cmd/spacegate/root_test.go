package main

import (
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func TestExitCodes(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     string // substring of stdout
		stderr     string // substring of stderr
		emptyStdio bool   // stdout must be empty
	}{
		{name: "version", args: []string{"version"}, code: exitOK, stdout: "spacegate "},
		{name: "unknown command", args: []string{"frobnicate"}, code: exitUsage, stderr: `unknown command "frobnicate"`, emptyStdio: true},
		{name: "unknown flag", args: []string{"version", "--frobnicate"}, code: exitUsage, stderr: "--frobnicate", emptyStdio: true},
		{name: "unknown root flag", args: []string{"--frobnicate"}, code: exitUsage, stderr: "--frobnicate", emptyStdio: true},
		{name: "extra argument", args: []string{"check", "extra"}, code: exitUsage, stderr: "takes no arguments"},
		{name: "check missing file", args: []string{"check", "--config", missing}, code: exitError, stdout: missing},
		{name: "serve missing file", args: []string{"serve", "--config", missing}, code: exitError, stderr: missing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit code = %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, stdout, stderr)
			}
			if !strings.Contains(stdout, tt.stdout) {
				t.Errorf("stdout = %q, want it to contain %q", stdout, tt.stdout)
			}
			if !strings.Contains(stderr, tt.stderr) {
				t.Errorf("stderr = %q, want it to contain %q", stderr, tt.stderr)
			}
			if tt.emptyStdio && stdout != "" {
				t.Errorf("stdout = %q, want nothing on a usage error", stdout)
			}
		})
	}
}

func TestVersionLine(t *testing.T) {
	code, stdout, _ := runCLI(t, "version")
	if code != exitOK {
		t.Fatalf("exit code = %d, want 0", code)
	}
	if !strings.HasPrefix(stdout, "spacegate "+version) || strings.Count(stdout, "\n") != 1 {
		t.Errorf("version printed %q, want one line starting %q", stdout, "spacegate "+version)
	}
}

// TestFlagPlaceholders: pflag takes a `quoted` word of a flag's usage as
// the placeholder of its value, so "from `spacegate certs list`" made the
// help say "--id spacegate certs list". A placeholder is one word.
func TestFlagPlaceholders(t *testing.T) {
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if name, _ := pflag.UnquoteUsage(f); strings.ContainsAny(name, " \t") {
					t.Errorf("%s --%s: placeholder %q; a backquoted phrase in the usage %q", c.CommandPath(), f.Name, name, f.Usage)
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd(io.Discard, io.Discard))
}
