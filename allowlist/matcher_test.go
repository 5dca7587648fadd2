package allowlist

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
)

var matcherTests = []struct {
	name    string
	pfx     []netip.Prefix
	wantIn  map[string]int // address -> index of the rule that should match
	wantOut []netip.Addr
}{
	{
		name:    "empty fails closed",
		pfx:     pp(),
		wantOut: aa("8.8.8.8", "10.0.0.1", "::1", "2001:db8::1", "::ffff:10.0.0.1"),
	},
	{
		name:    "ipv4",
		pfx:     pp("10.0.0.0/8", "192.0.2.7/32"),
		wantIn:  map[string]int{"10.0.0.1": 0, "10.255.255.255": 0, "192.0.2.7": 1},
		wantOut: aa("11.0.0.0", "9.255.255.255", "192.0.2.6", "192.0.2.8"),
	},
	{
		name:    "ipv6",
		pfx:     pp("2001:db8::/32", "2001:db8:ffff::1/128"),
		wantIn:  map[string]int{"2001:db8::1": 0, "2001:db8:1::": 0, "2001:db8:ffff::1": 1},
		wantOut: aa("2001:db9::1", "::1", "fe80::1"),
	},
	{
		name:    "ipv4-mapped addresses are looked up as ipv4",
		pfx:     pp("10.0.0.0/8"),
		wantIn:  map[string]int{"::ffff:10.1.2.3": 0, "10.1.2.3": 0},
		wantOut: aa("::ffff:11.1.2.3"),
	},
	{
		name:    "ipv4-mapped rules are normalised to ipv4",
		pfx:     pp("::ffff:10.0.0.0/104", "::ffff:192.0.2.7/128"),
		wantIn:  map[string]int{"10.1.2.3": 0, "::ffff:10.1.2.3": 0, "192.0.2.7": 1},
		wantOut: aa("11.0.0.1", "::a00:1", "192.0.2.8"),
	},
	{
		name:   "most specific rule wins",
		pfx:    pp("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32"),
		wantIn: map[string]int{"10.9.0.1": 0, "10.1.9.1": 1, "10.1.2.9": 2, "10.1.2.3": 3},
	},
	{
		name:    "ipv4 everything does not admit ipv6",
		pfx:     pp("0.0.0.0/0"),
		wantIn:  map[string]int{"0.0.0.0": 0, "255.255.255.255": 0, "::ffff:1.2.3.4": 0},
		wantOut: aa("::", "::1", "2001:db8::1"),
	},
	{
		name:    "ipv6 everything does not admit ipv4 or mapped",
		pfx:     pp("::/0"),
		wantIn:  map[string]int{"::": 0, "::1": 0, "2001:db8::1": 0, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff": 0},
		wantOut: aa("1.2.3.4", "::ffff:1.2.3.4", "0.0.0.0"),
	},
	{
		name:   "both families",
		pfx:    pp("0.0.0.0/0", "::/0"),
		wantIn: map[string]int{"1.2.3.4": 0, "::ffff:1.2.3.4": 0, "2001:db8::1": 1},
	},
	{
		name:   "zone is ignored",
		pfx:    pp("fe80::/10"),
		wantIn: map[string]int{"fe80::1%eth0": 0},
	},
	{
		name:   "host bits in a rule are cleared",
		pfx:    pp("10.0.0.5/8"),
		wantIn: map[string]int{"10.200.0.1": 0},
	},
}

// tables are the tables a Matcher can be built on. The Matcher tests run
// on each; NewMatcher uses the first.
var tables = []struct {
	name string
	new  func() table
}{
	{"bart", newBartTable},
	{"cidranger", newRangerTable},
}

func TestNewMatcherUsesBart(t *testing.T) {
	m, err := NewMatcher(rulesOf(pp("10.0.0.0/8")))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.table.(*bartTable); !ok {
		t.Errorf("NewMatcher built a %T, want *bartTable", m.table)
	}
}

func TestMatcher(t *testing.T) {
	for _, tab := range tables {
		for _, tt := range matcherTests {
			t.Run(tab.name+"/"+tt.name, func(t *testing.T) {
				rules := rulesOf(tt.pfx)
				m, err := newMatcher(rules, tab.new)
				if err != nil {
					t.Fatalf("newMatcher: %v", err)
				}
				if m.Len() != len(rules) {
					t.Errorf("Len = %d, want %d", m.Len(), len(rules))
				}
				for s, i := range tt.wantIn {
					ip := netip.MustParseAddr(s)
					if id, ok := m.Lookup(ip); !ok || id != rules[i].ID {
						t.Errorf("Lookup(%v) = %q, %v; want %q (rule %v), true", ip, id, ok, rules[i].ID, tt.pfx[i])
					}
				}
				for _, ip := range tt.wantOut {
					if id, ok := m.Lookup(ip); ok || id != "" {
						t.Errorf("Lookup(%v) = %q, %v; want no match", ip, id, ok)
					}
				}
				if id, ok := m.Lookup(netip.Addr{}); ok || id != "" {
					t.Errorf("Lookup(zero Addr) = %q, %v; want no match", id, ok)
				}
			})
		}
	}
}

func TestMatcherNil(t *testing.T) {
	var m *Matcher
	for _, ip := range aa("1.2.3.4", "::1", "::ffff:1.2.3.4") {
		if id, ok := m.Lookup(ip); ok || id != "" {
			t.Errorf("nil Matcher: Lookup(%v) = %q, %v; want no match", ip, id, ok)
		}
	}
	if n := m.Len(); n != 0 {
		t.Errorf("nil Matcher: Len = %d, want 0", n)
	}
	if ids := m.IDs(); len(ids) != 0 {
		t.Errorf("nil Matcher: IDs = %q, want none", ids)
	}
}

func TestMatcherFromParsedFile(t *testing.T) {
	r, err := Parse([]byte(`rules:
  - id: ` + id1 + `
    cidr: 192.0.2.0/24
  - id: ` + id2 + `
    cidr: ::ffff:198.51.100.0/120
  - id: ` + id3 + `
    cidr: 2001:db8::/32
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	m, err := NewMatcher(r.Rules)
	if err != nil {
		t.Fatalf("NewMatcher: %v", err)
	}
	if want := []string{id1, id2, id3}; !slices.Equal(m.IDs(), want) {
		t.Errorf("IDs = %q, want %q", m.IDs(), want)
	}
	for ip, want := range map[string]string{
		"192.0.2.1":           id1,
		"::ffff:198.51.100.9": id2,
		"198.51.100.9":        id2,
		"2001:db8::7":         id3,
	} {
		if id, ok := m.Lookup(netip.MustParseAddr(ip)); !ok || id != want {
			t.Errorf("Lookup(%s) = %q, %v; want %q, true", ip, id, ok, want)
		}
	}
}

func TestMatcherIDsIsACopy(t *testing.T) {
	m, err := NewMatcher(rulesOf(pp("10.0.0.0/8")))
	if err != nil {
		t.Fatal(err)
	}
	ids := m.IDs()
	ids[0] = "changed"
	if got := m.IDs()[0]; got != testID(0) {
		t.Errorf("after changing the slice IDs returned, IDs()[0] = %q, want %q", got, testID(0))
	}
}

func TestNewMatcherErrors(t *testing.T) {
	tests := []struct {
		name  string
		rules []Rule
		want  []string
	}{
		{
			name:  "invalid prefix",
			rules: []Rule{{ID: id1}, {ID: id2, CIDR: netip.MustParsePrefix("10.0.0.0/8"), Line: 4}, {ID: id3, Line: 6}},
			want: []string{
				"rule 1: missing cidr; want a.b.c.d/n or ipv6/n",
				"line 6: missing cidr; want a.b.c.d/n or ipv6/n",
			},
		},
		{
			name:  "duplicate after normalisation",
			rules: rulesOf(pp("10.0.0.0/8", "::ffff:10.0.0.0/104", "10.1.2.3/8")),
			want: []string{
				"rule 2: duplicate cidr 10.0.0.0/8; rule 1 has the same block",
				"rule 3: duplicate cidr 10.0.0.0/8; rule 1 has the same block",
			},
		},
	}
	for _, tab := range tables {
		for _, tt := range tests {
			t.Run(tab.name+"/"+tt.name, func(t *testing.T) {
				m, err := newMatcher(tt.rules, tab.new)
				if m != nil {
					t.Errorf("newMatcher returned a Matcher along with error %v", err)
				}
				if msgs := problems(t, err); !slices.Equal(msgs, tt.want) {
					t.Errorf("newMatcher problems:\n got %q\nwant %q", msgs, tt.want)
				}
			})
		}
	}
}

// TestMatcherConcurrent gives the race detector lookups from many
// goroutines on one Matcher.
func TestMatcherConcurrent(t *testing.T) {
	for _, tab := range tables {
		t.Run(tab.name, func(t *testing.T) {
			rules := rulesOf(pp("10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"))
			m, err := newMatcher(rules, tab.new)
			if err != nil {
				t.Fatal(err)
			}
			addrs := aa("10.0.0.1", "10.1.0.1", "2001:db8::1", "8.8.8.8", "::ffff:10.1.0.1")
			want := []string{rules[0].ID, rules[1].ID, rules[2].ID, "", rules[1].ID}
			var wg sync.WaitGroup
			errs := make(chan string, 8)
			for range 8 {
				wg.Go(func() {
					for range 500 {
						for i, ip := range addrs {
							if id, _ := m.Lookup(ip); id != want[i] {
								select {
								case errs <- ip.String() + " matched " + id + ", want " + want[i]:
								default:
								}
								return
							}
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for e := range errs {
				t.Error(e)
			}
		})
	}
}

// TestMatcherMostSpecific checks both tables against a linear scan on
// many nested blocks of both families: each lookup must name the rule with
// the longest block holding the address, or none.
func TestMatcherMostSpecific(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	// Few distinct top bytes and a full range of lengths make blocks nest
	// deeply, the case where a table could pick a shorter block.
	randAddr := func(v6 bool) netip.Addr {
		if v6 {
			var b [16]byte
			b[0], b[1] = 0x20, byte(rng.IntN(2))
			for i := 2; i < 16; i++ {
				b[i] = byte(rng.Uint32())
			}
			return netip.AddrFrom16(b)
		}
		return netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.Uint32()), byte(rng.Uint32())})
	}
	var ps []netip.Prefix
	seen := map[netip.Prefix]bool{}
	for len(ps) < 2000 {
		v6 := rng.IntN(2) == 0
		a := randAddr(v6)
		bits := 8 + rng.IntN(a.BitLen()-7)
		p := netip.PrefixFrom(a, bits).Masked()
		if !seen[p] {
			seen[p] = true
			ps = append(ps, p)
		}
	}
	rules := rulesOf(ps)
	var addrs []netip.Addr
	for range 5000 {
		addrs = append(addrs, randAddr(rng.IntN(2) == 0))
	}
	for _, p := range ps {
		addrs = append(addrs, p.Addr(), lastAddr(p))
	}
	addrs = append(addrs, aa("::ffff:10.1.2.3", "::ffff:10.0.0.0", "10.255.255.255", "::", "0.0.0.0")...)

	want := make([]string, len(addrs))
	for i, a := range addrs {
		best := -1
		for j, p := range ps {
			if p.Contains(a.Unmap()) && (best < 0 || p.Bits() > ps[best].Bits()) {
				best = j
			}
		}
		if best >= 0 {
			want[i] = rules[best].ID
		}
	}
	for _, tab := range tables {
		t.Run(tab.name, func(t *testing.T) {
			m, err := newMatcher(rules, tab.new)
			if err != nil {
				t.Fatal(err)
			}
			hits, fails := 0, 0
			for i, a := range addrs {
				id, ok := m.Lookup(a)
				if ok != (want[i] != "") || id != want[i] {
					if fails++; fails <= 10 {
						t.Errorf("Lookup(%v) = %q, %v; want %q", a, id, ok, want[i])
					}
				}
				if ok {
					hits++
				}
			}
			if hits < len(ps) {
				t.Errorf("only %d of %d lookups matched; the test exercises too little", hits, len(addrs))
			}
		})
	}
}

// lastAddr returns the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
