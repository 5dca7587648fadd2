package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// badRules is a rules file whose only rule has a bad block on line 3.
const badRules = `rules:
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
    cidr: 10.0.0.300/32
    description: not an address
    created_at: 2019-07-17T00:05:52Z
`

// problem is one problem check must report: the file and line it must
// name, and a fragment of its message.
type problem struct {
	file string // relative to the config's directory
	line int
	text string
}

func TestCheckListsEveryProblem(t *testing.T) {
	tests := []struct {
		name   string
		config string
		want   []problem
	}{
		{
			name: "config problems",
			config: `admin:
  listen: 127.0.0.1:9187
colour: blue
tls:
  cert_file: pki/server.crt
  key_file: pki/server.key
  client_ca_file: pki/ca.crt
limits:
  handshake_timeout: 10x
routes:
  - name: db
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: 127.0.0.1:5432
    ip_rules_file: rules/dev-postgres.yaml
  - name: db
    protocol: redis
    listen: 127.0.0.1:6432
    upstream: 127.0.0.1:6379
    ip_rules_file: rules/dev-redis.yaml
`,
			want: []problem{
				{"spacegate.yaml", 3, "colour"},
				{"spacegate.yaml", 9, "10x"},
				{"spacegate.yaml", 16, `"db" is used twice`},
				{"spacegate.yaml", 18, "127.0.0.1:6432"},
			},
		},
		{
			name: "file problems",
			config: `tls:
  cert_file: pki/missing.crt
  key_file: pki/server.key
  client_ca_file: pki/ca.crt
routes:
  - name: db
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: 127.0.0.1:5432
    ip_rules_file: rules/bad.yaml
  - name: cache
    protocol: redis
    listen: 127.0.0.1:6380
    upstream: 127.0.0.1:6379
    ip_rules_file: rules/missing.yaml
`,
			want: []problem{
				{"spacegate.yaml", 2, "missing.crt"},
				{"rules/bad.yaml", 3, "10.0.0.300/32"},
				{"spacegate.yaml", 15, "missing.yaml"},
			},
		},
		{
			name: "all at once",
			config: `admin:
  listen: 127.0.0.1:9187
colour: blue
tls:
  cert_file: pki/missing.crt
  key_file: pki/server.key
  client_ca_file: pki/ca.crt
limits:
  handshake_timeout: 10x
routes:
  - name: db
    protocol: postgres
    listen: 127.0.0.1:6432
    upstream: 127.0.0.1:5432
    ip_rules_file: rules/bad.yaml
  - name: db
    protocol: redis
    listen: 127.0.0.1:6432
    upstream: 127.0.0.1:6379
    ip_rules_file: rules/missing.yaml
`,
			want: []problem{
				{"spacegate.yaml", 3, "colour"},
				{"spacegate.yaml", 5, "missing.crt"},
				{"spacegate.yaml", 9, "10x"},
				{"rules/bad.yaml", 3, "10.0.0.300/32"},
				{"spacegate.yaml", 16, `"db" is used twice`},
				{"spacegate.yaml", 18, "127.0.0.1:6432"},
				{"spacegate.yaml", 20, "missing.yaml"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The quickstart files give the config a valid key, CA and
			// rules, so that only the planted problems are reported.
			dir, _ := makeQuickstart(t)
			config := filepath.Join(dir, "spacegate.yaml")
			writeFile(t, config, tt.config)
			writeFile(t, filepath.Join(dir, "rules", "bad.yaml"), badRules)

			code, stdout, stderr := runCLI(t, "check", "--config", config)
			if code != exitError {
				t.Errorf("check exit code = %d, want %d\nstderr: %s", code, exitError, stderr)
			}
			lines := strings.Split(strings.TrimSpace(stdout), "\n")
			assertProblems(t, dir, lines, tt.want)

			code, stdout, _ = runCLI(t, "check", "--json", "--config", config)
			if code != exitError {
				t.Errorf("check --json exit code = %d, want %d", code, exitError)
			}
			var res struct {
				OK       *bool     `json:"ok"`
				Problems *[]string `json:"problems"`
			}
			if err := json.Unmarshal([]byte(stdout), &res); err != nil {
				t.Fatalf("check --json printed no JSON object: %v\n%s", err, stdout)
			}
			if res.OK == nil || *res.OK {
				t.Errorf(`check --json: "ok" is %v, want false`, res.OK)
			}
			if res.Problems == nil {
				t.Fatalf(`check --json: no "problems" key:\n%s`, stdout)
			}
			assertProblems(t, dir, *res.Problems, tt.want)
		})
	}
}

// assertProblems checks that got holds exactly one problem for each of
// want, each naming its file:line.
func assertProblems(t *testing.T, dir string, got []string, want []problem) {
	t.Helper()
	var missing []string
	for _, w := range want {
		at := filepath.Join(dir, w.file) + ":" + strconv.Itoa(w.line) + ":"
		found := false
		for _, g := range got {
			if strings.Contains(g, at) && strings.Contains(g, w.text) {
				found = true
			}
		}
		if !found {
			missing = append(missing, fmt.Sprintf("%s:%d: ...%s...", w.file, w.line, w.text))
		}
	}
	if len(missing) > 0 || len(got) != len(want) {
		t.Errorf("got %d problems, want %d (one per planted problem, each naming file:line); missing:\n  %s\ngot:\n  %s",
			len(got), len(want), strings.Join(missing, "\n  "), strings.Join(got, "\n  "))
	}
}

func TestCheckJSONOK(t *testing.T) {
	dir, _ := makeQuickstart(t)
	code, stdout, stderr := runCLI(t, "check", "--json", "--config", filepath.Join(dir, "spacegate.yaml"))
	if code != exitOK {
		t.Fatalf("check --json exit code = %d, want 0\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("check --json printed no JSON object: %v\n%s", err, stdout)
	}
	if res["ok"] != true {
		t.Errorf(`"ok" = %v, want true`, res["ok"])
	}
	if ps, ok := res["problems"].([]any); !ok || len(ps) != 0 {
		t.Errorf(`"problems" = %v, want an empty list`, res["problems"])
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
