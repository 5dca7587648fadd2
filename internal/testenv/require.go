package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// StrictEnv is the environment variable that turns missing integration
// binaries from a skip into a failure when set to "1".
const StrictEnv = "SPACEGATE_REQUIRE_INTEGRATION"

// debianPackage names the Debian package that installs bin, so that a skip
// message says how to fix it, or "" if bin is not one the tests know.
func debianPackage(bin string) string {
	switch bin {
	case "initdb", "postgres", "pg_ctl":
		return "postgresql"
	case "psql", "pgbench", "pg_isready":
		return "postgresql-client"
	case "redis-server":
		return "redis-server"
	case "redis-cli":
		return "redis-tools"
	case "openssl":
		return "openssl"
	}
	return ""
}

// Strict reports whether missing integration binaries must fail tests
// rather than skip them, that is whether SPACEGATE_REQUIRE_INTEGRATION is "1".
func Strict() bool {
	return os.Getenv(StrictEnv) == "1"
}

// Require skips t when any of the named binaries cannot be found, or fails
// it when Strict reports true. The message names every missing binary and
// the Debian package that provides it. PostgreSQL server binaries (initdb,
// postgres, pg_ctl) are looked up in PostgresBinDir as well as on PATH.
// Require with no names does nothing.
func Require(t testing.TB, bins ...string) {
	t.Helper()
	var missing []string
	for _, bin := range bins {
		if _, err := LookBinary(bin); err != nil {
			pkg := debianPackage(bin)
			if pkg == "" {
				pkg = "unknown package"
			} else {
				pkg = "Debian package " + pkg
			}
			missing = append(missing, fmt.Sprintf("%s (%s)", bin, pkg))
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "integration test needs missing binaries: " + strings.Join(missing, ", ")
	if Strict() {
		t.Fatalf("%s; failing because %s=1", msg, StrictEnv)
		return
	}
	t.Skipf("%s; set %s=1 to fail instead of skip", msg, StrictEnv)
}

// LookBinary returns the path of the named executable. It searches PATH
// and, for the PostgreSQL server binaries that Debian keeps off PATH, the
// directory PostgresBinDir returns.
func LookBinary(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err == nil {
		return path, nil
	}
	if debianPackage(name) == "postgresql" {
		if dir, derr := PostgresBinDir(); derr == nil {
			p := filepath.Join(dir, name)
			if _, serr := exec.LookPath(p); serr == nil {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("looking up binary %q: %w", name, err)
}
