package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spacegate/spacegate/config"
)

const minimalConfig = `tls:
  cert_file: pki/server.crt
  key_file: pki/server.key
  client_ca_file: pki/ca.crt
routes:
  - name: db
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: 127.0.0.1:5432
    ip_rules_file: rules/db.yaml
`

// TestBuildReportsEveryFileProblem: Build loads every named file and lists
// all problems, each naming its file, rather than stopping at the first.
func TestBuildReportsEveryFileProblem(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte("rules:\n  - id: 00000000-0000-4000-8000-000000000001\n    cidr: 10.0.0.5/8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "c.yaml")
	cfg := strings.Replace(minimalConfig, "rules/db.yaml", "rules.yaml", 1) + `  - name: cache
    protocol: redis
    listen: 127.0.0.1:6380
    upstream: 127.0.0.1:6379
    ip_rules_file: missing.yaml
`
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Build(c, 1)
	joined := ""
	for _, p := range config.Problems(err) {
		joined += p.Error() + "\n"
	}
	for _, w := range []string{
		"rules.yaml:3:", "did you mean 10.0.0.0/8",
		"missing.yaml",
		"server.crt",
	} {
		if !strings.Contains(joined, w) {
			t.Errorf("problems lack %q; got:\n%s", w, joined)
		}
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
