package testenv

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

// recordingTB records how Require ended a test instead of ending it.
type recordingTB struct {
	testing.TB
	skipped, failed string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
}

func TestRequire(t *testing.T) {
	// The test binary itself is the one executable sure to exist.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		bins     []string
		strict   string
		wantSkip []string // substrings of the skip message; nil: no skip
		wantFail []string // substrings of the failure; nil: no failure
	}{
		{name: "nothing", bins: nil},
		{name: "present", bins: []string{self}},
		{
			name:     "missing",
			bins:     []string{self, "spacegate-no-such-binary"},
			wantSkip: []string{"spacegate-no-such-binary (unknown package)", "SPACEGATE_REQUIRE_INTEGRATION=1"},
		},
		{
			name:     "missing strict",
			bins:     []string{"spacegate-no-such-binary"},
			strict:   "1",
			wantFail: []string{"spacegate-no-such-binary", "SPACEGATE_REQUIRE_INTEGRATION=1"},
		},
		{
			name:     "strict only when 1",
			bins:     []string{"spacegate-no-such-binary"},
			strict:   "true",
			wantSkip: []string{"spacegate-no-such-binary"},
		},
		{
			name:     "all missing named",
			bins:     []string{"spacegate-missing-a", "spacegate-missing-b"},
			wantSkip: []string{"spacegate-missing-a", "spacegate-missing-b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(StrictEnv, tt.strict)
			rec := &recordingTB{TB: t}
			Require(rec, tt.bins...)
			check := func(kind, got string, want []string) {
				if want == nil {
					if got != "" {
						t.Errorf("unexpected %s: %q", kind, got)
					}
					return
				}
				if got == "" {
					t.Errorf("no %s, want one containing %q", kind, want)
				}
				for _, w := range want {
					if !strings.Contains(got, w) {
						t.Errorf("%s %q does not contain %q", kind, got, w)
					}
				}
			}
			check("skip", rec.skipped, tt.wantSkip)
			check("failure", rec.failed, tt.wantFail)
		})
	}
}

func TestDebianPackage(t *testing.T) {
	tests := map[string]string{
		"initdb":       "postgresql",
		"postgres":     "postgresql",
		"psql":         "postgresql-client",
		"pgbench":      "postgresql-client",
		"redis-server": "redis-server",
		"redis-cli":    "redis-tools",
		"openssl":      "openssl",
		"sh":           "",
	}
	for bin, want := range tests {
		if got := debianPackage(bin); got != want {
			t.Errorf("debianPackage(%q) = %q, want %q", bin, got, want)
		}
	}
}

func TestParsePostgresVersion(t *testing.T) {
	tests := []struct {
		name   string
		want   []int
		wantOK bool
	}{
		{"15", []int{15}, true},
		{"9.6", []int{9, 6}, true},
		{"17", []int{17}, true},
		{"", nil, false},
		{"15beta", nil, false},
		{"-1", nil, false},
	}
	for _, tt := range tests {
		got, ok := parsePostgresVersion(tt.name)
		if ok != tt.wantOK || !slices.Equal(got, tt.want) {
			t.Errorf("parsePostgresVersion(%q) = %v, %v; want %v, %v", tt.name, got, ok, tt.want, tt.wantOK)
		}
	}
	// 10 sorts after 9.6, which a string comparison would get wrong.
	a, _ := parsePostgresVersion("10")
	b, _ := parsePostgresVersion("9.6")
	if slices.Compare(a, b) <= 0 {
		t.Errorf("version 10 does not sort after 9.6")
	}
}

func TestLookBinaryPostgresServer(t *testing.T) {
	dir, err := PostgresBinDir()
	if err != nil {
		Require(t, "initdb")
		t.Fatalf("PostgresBinDir: %v", err)
	}
	for _, bin := range []string{"initdb", "postgres"} {
		path, err := LookBinary(bin)
		if err != nil {
			t.Errorf("LookBinary(%q): %v", bin, err)
			continue
		}
		if !strings.HasSuffix(path, "/"+bin) {
			t.Errorf("LookBinary(%q) = %q, want a path ending in /%s (bin dir %s)", bin, path, bin, dir)
		}
	}
}
