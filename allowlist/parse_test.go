package allowlist

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spacegate/spacegate/internal/safefile"
)

const (
	id1 = "38c466b6-dcfb-4869-b5ac-40420b786fb4"
	id2 = "5f0c7e0e-2b8a-4b7e-9a51-8c1f7d0c2a11"
	id3 = "9d7a3c55-6f2e-4d8b-b1a0-3e4f5a6b7c8d"
)

var (
	t1 = time.Date(2019, 7, 17, 0, 5, 52, 0, time.UTC)
	t2 = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
)

// parseTests are valid files and the rules they hold. TestScanRulesAgrees
// also runs them through both paths of parse.
var parseTests = []struct {
	name string
	in   string
	want []Rule
}{
	{name: "empty file", in: ""},
	{name: "only comments", in: "# no rules yet\n"},
	{name: "empty list", in: "rules: []\n"},
	{name: "null list", in: "rules:\n"},
	{
		name: "contract example",
		in: `rules:
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
    cidr: 1.2.3.4/32
    description: My Office IP
    created_at: 2019-07-17T00:05:52Z
    updated_at: 2020-01-02T03:04:05Z
`,
		want: []Rule{{ID: id1, CIDR: netip.MustParsePrefix("1.2.3.4/32"), Description: "My Office IP",
			CreatedAt: t1, UpdatedAt: t2, Line: 2}},
	},
	{
		name: "optional fields absent, ipv6, quoted values",
		in: `rules:
  - id: "5f0c7e0e-2b8a-4b7e-9a51-8c1f7d0c2a11"
    cidr: "2001:db8::/32"
  - cidr: 10.0.0.0/8
    id: 9d7a3c55-6f2e-4d8b-b1a0-3e4f5a6b7c8d
    created_at: "2019-07-17T00:05:52Z"
`,
		want: []Rule{
			{ID: id2, CIDR: netip.MustParsePrefix("2001:db8::/32"), Line: 2},
			{ID: id3, CIDR: netip.MustParsePrefix("10.0.0.0/8"), CreatedAt: t1, Line: 4},
		},
	},
	{
		name: "mapped block becomes ipv4, upper-case id becomes lower case",
		in: `rules:
  - id: 38C466B6-DCFB-4869-B5AC-40420B786FB4
    cidr: ::ffff:10.0.0.0/104
`,
		want: []Rule{{ID: id1, CIDR: netip.MustParsePrefix("10.0.0.0/8"), Line: 2}},
	},
	{
		name: "everything",
		in: `rules:
  - {id: 38c466b6-dcfb-4869-b5ac-40420b786fb4, cidr: 0.0.0.0/0}
  - {id: 5f0c7e0e-2b8a-4b7e-9a51-8c1f7d0c2a11, cidr: "::/0"}
`,
		want: []Rule{
			{ID: id1, CIDR: netip.MustParsePrefix("0.0.0.0/0"), Line: 2},
			{ID: id2, CIDR: netip.MustParsePrefix("::/0"), Line: 3},
		},
	},
	{
		name: "aliases",
		in: `rules:
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
    cidr: 192.0.2.0/24
    description: &office Head office
  - id: 5f0c7e0e-2b8a-4b7e-9a51-8c1f7d0c2a11
    cidr: 198.51.100.0/24
    description: *office
`,
		want: []Rule{
			{ID: id1, CIDR: netip.MustParsePrefix("192.0.2.0/24"), Description: "Head office", Line: 2},
			{ID: id2, CIDR: netip.MustParsePrefix("198.51.100.0/24"), Description: "Head office", Line: 5},
		},
	},
	{
		name: "fractional seconds and offsets",
		in: `rules:
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
    cidr: 192.0.2.0/24
    created_at: 2019-07-17T02:05:52.5+02:00
`,
		want: []Rule{{ID: id1, CIDR: netip.MustParsePrefix("192.0.2.0/24"),
			CreatedAt: t1.Add(500 * time.Millisecond), Line: 2}},
	},
}

func TestParse(t *testing.T) {
	for _, tt := range parseTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got == nil {
				t.Fatal("Parse returned nil rules and no error")
			}
			if !slices.EqualFunc(got.Rules, tt.want, ruleEqual) {
				t.Errorf("Parse rules:\n got %+v\nwant %+v", got.Rules, tt.want)
			}
		})
	}
}

func ruleEqual(a, b Rule) bool {
	return a.ID == b.ID && a.CIDR == b.CIDR && a.Description == b.Description &&
		a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt) && a.Line == b.Line
}

// parseErrorTests are broken files and the problems Parse reports for
// them. TestScanRulesAgrees also checks that the fast path turns each down.
var parseErrorTests = []struct {
	name string
	in   string
	want []string
}{
	{
		name: "unknown key in rule",
		in: `rules:
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
    cidr: 1.2.3.4/32
    cdir: 1.2.3.4/32
`,
		want: []string{`line 4: unknown key "cdir" in rule; want id, cidr, description, created_at or updated_at`},
	},
	{
		name: "unknown top-level key",
		in:   "rules: []\nrule: []\n",
		want: []string{`line 2: unknown key "rule"; want rules`},
	},
	{
		name: "missing id",
		in:   "rules:\n  - cidr: 1.2.3.4/32\n",
		want: []string{"line 2: missing id; want a UUID such as 38c466b6-dcfb-4869-b5ac-40420b786fb4"},
	},
	{
		name: "empty id",
		in:   "rules:\n  - cidr: 1.2.3.4/32\n    id: \"\"\n",
		want: []string{"line 2: missing id; want a UUID such as 38c466b6-dcfb-4869-b5ac-40420b786fb4"},
	},
	{
		name: "missing cidr",
		in:   "rules:\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr:\n",
		want: []string{"line 2: missing cidr; want a.b.c.d/n or ipv6/n"},
	},
	{
		name: "id not a uuid",
		in:   "rules:\n  - cidr: 1.2.3.4/32\n    id: office\n",
		want: []string{`line 3: id "office" is not a UUID; want the form 38c466b6-dcfb-4869-b5ac-40420b786fb4`},
	},
	{
		name: "id uuid in braces",
		in:   "rules:\n  - cidr: 1.2.3.4/32\n    id: \"{38c466b6-dcfb-4869-b5ac-40420b786fb4}\"\n",
		want: []string{`line 3: id "{38c466b6-dcfb-4869-b5ac-40420b786fb4}" is not a UUID; want the form 38c466b6-dcfb-4869-b5ac-40420b786fb4`},
	},
	{
		name: "bad cidr",
		in:   "rules:\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr: 1.2.3/24\n",
		want: []string{`line 3: bad cidr "1.2.3/24": want a.b.c.d/n or ipv6/n`},
	},
	{
		name: "prefix too long",
		in:   "rules:\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr: 1.2.3.4/33\n",
		want: []string{`line 3: bad cidr "1.2.3.4/33": want a.b.c.d/n or ipv6/n`},
	},
	{
		name: "bare ipv4 address",
		in:   "rules:\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr: 1.2.3.4\n",
		want: []string{`line 3: cidr "1.2.3.4" has no prefix length; write 1.2.3.4/32 for a single address`},
	},
	{
		name: "bare ipv6 address",
		in:   "rules:\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr: 2001:db8::1\n",
		want: []string{`line 3: cidr "2001:db8::1" has no prefix length; write 2001:db8::1/128 for a single address`},
	},
	{
		name: "host bits set",
		in:   "rules:\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr: 10.0.0.5/8\n",
		want: []string{"line 3: cidr 10.0.0.5/8 has host bits set; did you mean 10.0.0.0/8?"},
	},
	{
		name: "host bits set in mapped block",
		in:   "rules:\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr: ::ffff:10.0.0.5/104\n",
		want: []string{"line 3: cidr ::ffff:10.0.0.5/104 has host bits set; did you mean 10.0.0.0/8?"},
	},
	{
		name: "host bits set ipv6",
		in:   "rules:\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr: 2001:db8::1/32\n",
		want: []string{"line 3: cidr 2001:db8::1/32 has host bits set; did you mean 2001:db8::/32?"},
	},
	{
		name: "duplicate id",
		in: `rules:
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
    cidr: 1.2.3.4/32
  - id: 38C466B6-DCFB-4869-B5AC-40420B786FB4
    cidr: 5.6.7.8/32
`,
		want: []string{"line 4: duplicate id 38c466b6-dcfb-4869-b5ac-40420b786fb4; first used by the rule at line 2"},
	},
	{
		name: "duplicate cidr after normalisation",
		in: `rules:
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
    cidr: 10.0.0.0/8
  - id: 5f0c7e0e-2b8a-4b7e-9a51-8c1f7d0c2a11
    cidr: ::ffff:10.0.0.0/104
`,
		want: []string{"line 4: duplicate cidr 10.0.0.0/8; the rule at line 2 has the same block"},
	},
	{
		name: "bad timestamps",
		in: `rules:
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
    cidr: 1.2.3.4/32
    created_at: yesterday
    updated_at: 2019-07-17
`,
		want: []string{
			`line 4: bad created_at "yesterday": want an RFC 3339 time such as 2019-07-17T00:05:52Z`,
			`line 5: bad updated_at "2019-07-17": want an RFC 3339 time such as 2019-07-17T00:05:52Z`,
		},
	},
	{
		name: "repeated key",
		in:   "rules:\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr: 1.2.3.4/32\n    cidr: 1.2.3.5/32\n",
		want: []string{"line 4: key cidr repeated in rule; first at line 3"},
	},
	{
		name: "value not a scalar",
		in:   "rules:\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr: [1.2.3.4/32, 1.2.3.5/32]\n",
		want: []string{"line 3: cidr must be a single value, got a list"},
	},
	{
		name: "rules not a list",
		in:   "rules: 1.2.3.4/32\n",
		want: []string{`line 1: rules must be a list of rules, got "1.2.3.4/32"`},
	},
	{
		name: "rule not a mapping",
		in:   "rules:\n  - 1.2.3.4/32\n",
		want: []string{`line 2: rule must be a mapping of id, cidr, description, created_at or updated_at; got "1.2.3.4/32"`},
	},
	{
		name: "empty rule",
		in:   "rules:\n  -\n  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n    cidr: 1.2.3.4/32\n",
		want: []string{`line 2: rule must be a mapping of id, cidr, description, created_at or updated_at; got nothing`},
	},
	{
		name: "repeated rules key",
		in:   "rules: []\nrules: []\n",
		want: []string{`line 2: mapping key "rules" already defined at line 1`},
	},
	{
		name: "top level a list",
		in:   "- id: 38c466b6-dcfb-4869-b5ac-40420b786fb4\n  cidr: 1.2.3.4/32\n",
		want: []string{"line 1: want a mapping with a rules key, got a list"},
	},
	{
		name: "top level a string",
		in:   "hello\n",
		want: []string{"line 1: want a mapping with a rules key, got a string"},
	},
	{
		name: "yaml syntax error",
		in:   "rules:\n  - id: [\n",
		want: []string{"line 2: invalid YAML: did not find expected node content"},
	},
	{
		name: "two documents",
		in:   "rules: []\n---\nrules: []\n",
		want: []string{"line 2: want one YAML document, found a second one"},
	},
	{
		name: "every problem at once, in line order",
		in: `rules:
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
    cidr: 10.0.0.5/8
    color: blue
  - cidr: 1.2.3.4
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
  - id: 5f0c7e0e-2b8a-4b7e-9a51-8c1f7d0c2a11
    cidr: 192.0.2.0/24
    created_at: soon
  - id: 9d7a3c55-6f2e-4d8b-b1a0-3e4f5a6b7c8d
    cidr: 192.0.2.0/24
extra: true
`,
		want: []string{
			"line 3: cidr 10.0.0.5/8 has host bits set; did you mean 10.0.0.0/8?",
			`line 4: unknown key "color" in rule; want id, cidr, description, created_at or updated_at`,
			"line 5: missing id; want a UUID such as 38c466b6-dcfb-4869-b5ac-40420b786fb4",
			`line 5: cidr "1.2.3.4" has no prefix length; write 1.2.3.4/32 for a single address`,
			"line 6: missing cidr; want a.b.c.d/n or ipv6/n",
			"line 6: duplicate id 38c466b6-dcfb-4869-b5ac-40420b786fb4; first used by the rule at line 2",
			`line 9: bad created_at "soon": want an RFC 3339 time such as 2019-07-17T00:05:52Z`,
			"line 10: duplicate cidr 192.0.2.0/24; the rule at line 7 has the same block",
			`line 12: unknown key "extra"; want rules`,
		},
	},
}

func TestParseErrors(t *testing.T) {
	for _, tt := range parseErrorTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse succeeded with %+v, want errors %q", got, tt.want)
			}
			if got != nil {
				t.Errorf("Parse returned rules %+v along with an error; want nil", got)
			}
			if msgs := problems(t, err); !slices.Equal(msgs, tt.want) {
				t.Errorf("Parse problems:\n got %q\nwant %q", msgs, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte("rules:\n  - id: "+id1+"\n    cidr: 1.2.3.4/32\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("rules:\n  - id: "+id1+"\n    cidr: 1.2.3.4\n    cdir: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	r, err := Load(good)
	if err != nil {
		t.Fatalf("Load(%q): %v", good, err)
	}
	if want := pp("1.2.3.4/32"); !slices.Equal(r.Prefixes(), want) {
		t.Errorf("Load(%q) prefixes = %v, want %v", good, r.Prefixes(), want)
	}

	_, err = Load(bad)
	want := []string{
		bad + `:3: cidr "1.2.3.4" has no prefix length; write 1.2.3.4/32 for a single address`,
		bad + `:4: unknown key "cdir" in rule; want id, cidr, description, created_at or updated_at`,
	}
	if msgs := problems(t, err); !slices.Equal(msgs, want) {
		t.Errorf("Load(%q) problems:\n got %q\nwant %q", bad, msgs, want)
	}

	missing := filepath.Join(dir, "missing.yaml")
	_, err = Load(missing)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(%q) = %v, want an error matching fs.ErrNotExist", missing, err)
	}
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(%q) error %q does not name the file", missing, err)
	}
	// A FIFO would block os.ReadFile until a writer came; Load refuses it
	// at once, naming it.
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(fifo)
	if !errors.Is(err, safefile.ErrNotRegular) || !strings.Contains(err.Error(), "rules file "+fifo+" is a FIFO") {
		t.Errorf("Load(%q) = %v, want an error matching safefile.ErrNotRegular naming the file", fifo, err)
	}
}
