package allowlist

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestMarshalFormat(t *testing.T) {
	r := &Rules{Rules: []Rule{
		{ID: id1, CIDR: netip.MustParsePrefix("1.2.3.4/32"), Description: "My Office IP", CreatedAt: t1},
		{ID: id2, CIDR: netip.MustParsePrefix("2001:db8::/32"), CreatedAt: t1, UpdatedAt: t2},
	}}
	want := `rules:
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
    cidr: 1.2.3.4/32
    description: My Office IP
    created_at: 2019-07-17T00:05:52Z
  - id: 5f0c7e0e-2b8a-4b7e-9a51-8c1f7d0c2a11
    cidr: 2001:db8::/32
    created_at: 2019-07-17T00:05:52Z
    updated_at: 2020-01-02T03:04:05Z
`
	got, err := r.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	if string(got) != want {
		t.Errorf("Marshal:\n%s\nwant:\n%s", got, want)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		rules []Rule
	}{
		{name: "none"},
		{name: "one", rules: []Rule{{ID: id1, CIDR: netip.MustParsePrefix("1.2.3.4/32"), Description: "My Office IP", CreatedAt: t1}}},
		{name: "all fields and families", rules: []Rule{
			{ID: id1, CIDR: netip.MustParsePrefix("0.0.0.0/0"), Description: "everyone: yes, really", CreatedAt: t1, UpdatedAt: t2},
			{ID: id2, CIDR: netip.MustParsePrefix("::/0"), Description: "multi\nline", CreatedAt: t1.Add(123 * time.Nanosecond)},
			{ID: id3, CIDR: netip.MustParsePrefix("2001:db8:1::/48"), Description: "'quotes' \"and\" # hash",
				CreatedAt: time.Date(2021, 3, 4, 5, 6, 7, 0, time.FixedZone("", -5*3600))},
		}},
		{name: "description that looks like other types", rules: []Rule{
			{ID: id1, CIDR: netip.MustParsePrefix("10.0.0.0/8"), Description: "true"},
			{ID: id2, CIDR: netip.MustParsePrefix("10.1.0.0/16"), Description: "2019-07-17T00:05:52Z"},
			{ID: id3, CIDR: netip.MustParsePrefix("10.2.0.0/16"), Description: "null"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := (&Rules{Rules: tt.rules}).Marshal()
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			got, err := Parse(data)
			if err != nil {
				t.Fatalf("Parse(Marshal()): %v\n%s", err, data)
			}
			// Line is where Marshal put the rule, which the original
			// rules do not know.
			for i := range got.Rules {
				got.Rules[i].Line = 0
			}
			if !slices.EqualFunc(got.Rules, tt.rules, ruleEqual) {
				t.Errorf("Parse(Marshal()):\n got %+v\nwant %+v\nfile:\n%s", got.Rules, tt.rules, data)
			}
		})
	}
}

func TestMarshalNil(t *testing.T) {
	var r *Rules
	got, err := r.Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	if want := "rules: []\n"; string(got) != want {
		t.Errorf("Marshal = %q, want %q", got, want)
	}
	if ps := r.Prefixes(); ps != nil {
		t.Errorf("Prefixes = %v, want nil", ps)
	}
}

func TestMarshalInvalid(t *testing.T) {
	r := &Rules{Rules: []Rule{{ID: id1}}}
	if got, err := r.Marshal(); err == nil {
		t.Errorf("Marshal of a rule without a cidr = %q, want an error", got)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		rules []Rule
		want  []string
	}{
		{name: "none"},
		{name: "valid", rules: rulesOf(pp("10.0.0.0/8", "10.0.0.0/16", "::/0", "0.0.0.0/0"))},
		{
			name:  "missing id and cidr",
			rules: []Rule{{}},
			want: []string{
				"rule 1: missing id; want a UUID such as 38c466b6-dcfb-4869-b5ac-40420b786fb4",
				"rule 1: missing cidr; want a.b.c.d/n or ipv6/n",
			},
		},
		{
			name:  "not a uuid, placed by line",
			rules: []Rule{{ID: "x", CIDR: netip.MustParsePrefix("1.2.3.4/32"), Line: 7}},
			want:  []string{`line 7: id "x" is not a UUID; want the form 38c466b6-dcfb-4869-b5ac-40420b786fb4`},
		},
		{
			name:  "not normalised",
			rules: rulesOf(pp("10.0.0.5/8", "::ffff:10.0.0.0/104")),
			want: []string{
				"rule 1: cidr 10.0.0.5/8 has host bits set; did you mean 10.0.0.0/8?",
				"rule 2: cidr ::ffff:10.0.0.0/104 is an IPv4-mapped block; write 10.0.0.0/8",
			},
		},
		{
			name: "duplicates",
			rules: []Rule{
				{ID: id1, CIDR: netip.MustParsePrefix("10.0.0.0/8")},
				{ID: id1, CIDR: netip.MustParsePrefix("10.0.0.0/8")},
			},
			want: []string{
				"rule 2: duplicate id 38c466b6-dcfb-4869-b5ac-40420b786fb4; first used by rule 1",
				"rule 2: duplicate cidr 10.0.0.0/8; rule 1 has the same block",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := (&Rules{Rules: tt.rules}).Validate()
			if msgs := problems(t, err); !slices.Equal(msgs, tt.want) {
				t.Errorf("Validate problems:\n got %q\nwant %q", msgs, tt.want)
			}
		})
	}
}

func TestParseCIDR(t *testing.T) {
	tests := []struct {
		in      string
		want    netip.Prefix
		wantErr string
	}{
		{in: "1.2.3.4/32", want: netip.MustParsePrefix("1.2.3.4/32")},
		{in: "0.0.0.0/0", want: netip.MustParsePrefix("0.0.0.0/0")},
		{in: "::/0", want: netip.MustParsePrefix("::/0")},
		{in: "2001:db8::/32", want: netip.MustParsePrefix("2001:db8::/32")},
		{in: "::ffff:10.0.0.0/104", want: netip.MustParsePrefix("10.0.0.0/8")},
		{in: "::ffff:0:0/96", want: netip.MustParsePrefix("0.0.0.0/0")},
		{in: "::ffff:1.2.3.4/128", want: netip.MustParsePrefix("1.2.3.4/32")},
		// Shorter than /96, a block around the mapped range stays IPv6.
		{in: "::/80", want: netip.MustParsePrefix("::/80")},
		{in: "", wantErr: `bad cidr "": want a.b.c.d/n or ipv6/n`},
		{in: "office", wantErr: `bad cidr "office": want a.b.c.d/n or ipv6/n`},
		{in: "010.0.0.0/8", wantErr: `bad cidr "010.0.0.0/8": want a.b.c.d/n or ipv6/n`},
		{in: "fe80::1%eth0/64", wantErr: `bad cidr "fe80::1%eth0/64": want a.b.c.d/n or ipv6/n`},
		{in: "1.2.3.4", wantErr: `cidr "1.2.3.4" has no prefix length; write 1.2.3.4/32 for a single address`},
		{in: "::ffff:1.2.3.4", wantErr: `cidr "::ffff:1.2.3.4" has no prefix length; write 1.2.3.4/32 for a single address`},
		{in: "10.0.0.5/8", wantErr: "cidr 10.0.0.5/8 has host bits set; did you mean 10.0.0.0/8?"},
	}
	for _, tt := range tests {
		got, err := ParseCIDR(tt.in)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("ParseCIDR(%q) = %v, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseCIDR(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestPrefixes(t *testing.T) {
	ps := pp("10.0.0.0/8", "2001:db8::/32", "1.2.3.4/32")
	r := &Rules{Rules: rulesOf(ps)}
	if got := r.Prefixes(); !slices.Equal(got, ps) {
		t.Errorf("Prefixes = %v, want %v", got, ps)
	}
}

func TestWholeFamily(t *testing.T) {
	for _, tc := range []struct {
		cidr, want string
	}{
		{"0.0.0.0/0", "IPv4"},
		{"::/0", "IPv6"},
		{"::ffff:0.0.0.0/96", "IPv4"}, // all of IPv4, once mapped addresses are unmapped
		{"0.0.0.0/1", ""},
		{"128.0.0.0/1", ""},
		{"::/1", ""},
		{"::ffff:0.0.0.0/97", ""},
		{"::/96", ""}, // IPv4-compatible, not mapped: no IPv4 client matches it
		{"10.0.0.0/8", ""},
		{"2001:db8::/32", ""},
	} {
		if got := WholeFamily(netip.MustParsePrefix(tc.cidr)); got != tc.want {
			t.Errorf("WholeFamily(%s) = %q, want %q", tc.cidr, got, tc.want)
		}
	}
	if got := WholeFamily(netip.Prefix{}); got != "" {
		t.Errorf("WholeFamily(zero) = %q", got)
	}
}

func TestRulesWarnings(t *testing.T) {
	r, err := Parse([]byte(`rules:
  - id: 38c466b6-dcfb-4869-b5ac-40420b786fb4
    cidr: 1.2.3.4/32
  - id: 5f0c7e0e-2b8a-4b7e-9a51-8c1f7d0c2a11
    cidr: ::ffff:0.0.0.0/96
  - id: 0b6c1c1e-8f4a-4c44-9d2e-3f1b2a4c5d6e
    cidr: ::/0
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"the rule at line 4 (0.0.0.0/0, id 5f0c7e0e-2b8a-4b7e-9a51-8c1f7d0c2a11) admits every IPv4 address: only the client certificate keeps strangers out",
		"the rule at line 6 (::/0, id 0b6c1c1e-8f4a-4c44-9d2e-3f1b2a4c5d6e) admits every IPv6 address: only the client certificate keeps strangers out",
	}
	if got := r.Warnings(); !slices.Equal(got, want) {
		t.Errorf("Warnings() = %q\nwant %q", got, want)
	}
	if got := (&Rules{Rules: []Rule{{ID: id1, CIDR: netip.MustParsePrefix("1.2.3.4/32")}}}).Warnings(); got != nil {
		t.Errorf("Warnings of a /32 = %q", got)
	}
}
