package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spacegate/spacegate/internal/testenv"
)

// tool is a program the harness runs and the Debian package that installs
// it.
type tool struct {
	name string // what to look up; the first found of names wins
	alts []string
	pkg  string
}

// tools lists every program the harness needs.
func tools() []tool {
	return []tool{
		{name: "initdb", pkg: "postgresql"},
		{name: "postgres", pkg: "postgresql"},
		{name: "pgbench", pkg: "postgresql-client"},
		{name: "psql", pkg: "postgresql-client"},
		{name: "redis-server", pkg: "redis-server"},
		{name: "redis-benchmark", pkg: "redis-tools"},
		{name: "stunnel", alts: []string{"stunnel4"}, pkg: "stunnel4"},
		{name: "pgbouncer", pkg: "pgbouncer"},
		{name: "haproxy", pkg: "haproxy"},
		{name: "timeout", pkg: "coreutils"},
	}
}

// toolPaths finds every tool. It returns their paths by name, or an error
// that names each missing program, its package and the command that
// installs them all.
func toolPaths() (map[string]string, error) {
	paths := make(map[string]string)
	var missing []string
	var pkgs []string
	for _, t := range tools() {
		p := lookTool(t)
		if p == "" {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", t.name, t.pkg))
			if !slices.Contains(pkgs, t.pkg) {
				pkgs = append(pkgs, t.pkg)
			}
			continue
		}
		paths[t.name] = p
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("missing programs: %s\ninstall them with:\n  sudo apt-get update && sudo apt-get install -y %s",
			strings.Join(missing, ", "), strings.Join(pkgs, " "))
	}
	return paths, nil
}

// lookTool returns the path of t, looking on PATH, in the sbin
// directories a non-root PATH lacks, and where Debian keeps the PostgreSQL
// server binaries; or "" when it is nowhere.
func lookTool(t tool) string {
	for _, name := range append([]string{t.name}, t.alts...) {
		if p, err := testenv.LookBinary(name); err == nil {
			return p
		}
		for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
			if p, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
				return p
			}
		}
	}
	return ""
}
