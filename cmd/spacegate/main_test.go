package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// binary is the spacegate executable built by TestMain for the tests that
// run it as a real process; buildErr says why there is none.
var (
	binary   string
	buildErr error
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "spacegate-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary, buildErr = buildBinary(filepath.Join(dir, "spacegate"))
	return m.Run()
}

// buildBinary builds this package into out with the go command of the
// toolchain running the tests, with the race detector if the tests have it,
// so that a data race in the real process fails its exit-code check.
func buildBinary(out string) (string, error) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		// CI may not have Go on PATH; the Debian-less install lives here.
		if goCmd, err = exec.LookPath("/usr/local/go/bin/go"); err != nil {
			return "", fmt.Errorf("no go command to build spacegate: %w", err)
		}
	}
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command(goCmd, append(args, ".")...)
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, output.Bytes())
	}
	return out, nil
}

// needBinary returns the path of the built spacegate binary or fails t.
func needBinary(t *testing.T) string {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("building spacegate: %v", buildErr)
	}
	return binary
}

// runCLI runs the command line in process and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// runCLIWithin is runCLI for a command that must end by itself (a serve
// that refuses its config, a check that must not block): it fails t if
// the command has not returned within d.
func runCLIWithin(t *testing.T, d time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		var out, errOut bytes.Buffer
		code = run(args, &out, &errOut)
		stdout, stderr = out.String(), errOut.String()
	}()
	select {
	case <-done:
		return code, stdout, stderr
	case <-time.After(d):
		t.Fatalf("spacegate %s did not return within %s", strings.Join(args, " "), d)
		return 0, "", ""
	}
}
