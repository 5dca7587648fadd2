package allowlist

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// benchSizes are the rule counts measured: the default max_ip_rules of a
// route, a large customer, and a stress case.
var benchSizes = []int{60, 10_000, 100_000}

// genPrefixes returns n distinct, normalised blocks of one family, the same
// ones on every run. Lengths are spread the way real allowlists are: mostly
// single addresses, then office and cloud ranges.
func genPrefixes(n int, v6 bool) []netip.Prefix {
	rng := rand.New(rand.NewPCG(1, uint64(n)))
	seen := make(map[netip.Prefix]bool, n)
	ps := make([]netip.Prefix, 0, n)
	for len(ps) < n {
		var p netip.Prefix
		if v6 {
			var b [16]byte
			b[0], b[1] = 0x20, 0x01 // 2001::/16, away from the mapped range
			for i := 2; i < 16; i++ {
				b[i] = byte(rng.Uint32())
			}
			bits := []int{128, 128, 64, 56, 48}[rng.IntN(5)]
			p = netip.PrefixFrom(netip.AddrFrom16(b), bits).Masked()
		} else {
			a := rng.Uint32()
			bits := []int{32, 32, 32, 24, 28, 16}[rng.IntN(6)]
			p = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), bits).Masked()
		}
		if !seen[p] {
			seen[p] = true
			ps = append(ps, p)
		}
	}
	return ps
}

// benchAddrs returns addresses to look up: half inside the blocks (their
// first address), half drawn at random, which mostly miss.
func benchAddrs(ps []netip.Prefix, v6 bool) []netip.Addr {
	rng := rand.New(rand.NewPCG(2, 3))
	addrs := make([]netip.Addr, 0, 1024)
	for i := 0; len(addrs) < 1024; i++ {
		if i%2 == 0 {
			addrs = append(addrs, ps[rng.IntN(len(ps))].Addr())
			continue
		}
		if v6 {
			var b [16]byte
			b[0], b[1] = 0x20, 0x01
			for j := 2; j < 16; j++ {
				b[j] = byte(rng.Uint32())
			}
			addrs = append(addrs, netip.AddrFrom16(b))
		} else {
			a := rng.Uint32()
			addrs = append(addrs, netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}))
		}
	}
	return addrs
}

// sizeName names a rule count the way the benchmarks do: 60, 10k, 100k.
func sizeName(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// BenchmarkLookup measures Matcher.Lookup on each table, for each family
// and size: BenchmarkLookup/{bart,cidranger}/{v4,v6}/{60,10k,100k}.
func BenchmarkLookup(b *testing.B) {
	for _, tab := range tables {
		for _, family := range []string{"v4", "v6"} {
			for _, n := range benchSizes {
				b.Run(tab.name+"/"+family+"/"+sizeName(n), func(b *testing.B) {
					v6 := family == "v6"
					ps := genPrefixes(n, v6)
					m, err := newMatcher(rulesOf(ps), tab.new)
					if err != nil {
						b.Fatal(err)
					}
					addrs := benchAddrs(ps, v6)
					hits := 0
					b.ReportAllocs()
					i := 0
					for b.Loop() {
						if _, ok := m.Lookup(addrs[i%len(addrs)]); ok {
							hits++
						}
						i++
					}
					if hits == 0 {
						b.Fatal("no lookup matched; the benchmark measures nothing real")
					}
				})
			}
		}
	}
}

// BenchmarkNewMatcher measures building the table of IPv4 rules:
// BenchmarkNewMatcher/{bart,cidranger}/{60,10k,100k}.
func BenchmarkNewMatcher(b *testing.B) {
	for _, tab := range tables {
		for _, n := range benchSizes {
			b.Run(tab.name+"/"+sizeName(n), func(b *testing.B) {
				rules := rulesOf(genPrefixes(n, false))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := newMatcher(rules, tab.new); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// benchRulesFile writes a rules file of n rules, half IPv4 and half IPv6,
// each with a description and a created_at, as the CLI writes them, and
// returns its path and size.
func benchRulesFile(b *testing.B, n int) (string, int64) {
	b.Helper()
	data, err := (&Rules{Rules: genRules(n)}).Marshal()
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return path, int64(len(data))
}

// genRules returns n valid rules, half IPv4 and half IPv6, each with a
// description and a created_at, the same ones on every run.
func genRules(n int) []Rule {
	ps := append(genPrefixes(n/2, false), genPrefixes(n-n/2, true)...)
	rules := rulesOf(ps)
	for i := range rules {
		rules[i].Description = fmt.Sprintf("customer %d office", i)
		rules[i].CreatedAt = time.Date(2019, 7, 17, 0, 5, 52, 0, time.UTC).Add(time.Duration(i) * time.Minute)
	}
	return rules
}

// loadYAML is Load on the yaml.v3 path alone, as Load was before issue 6.
func loadYAML(path string) (*Rules, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseYAML(path, data)
}

// BenchmarkLoad measures reading and parsing a 100k-rule file, by Load
// (which takes the fast path for such a file) and by the yaml.v3 path
// alone, which Load falls back to for anything unusual or wrong.
func BenchmarkLoad(b *testing.B) {
	const n = 100_000
	path, size := benchRulesFile(b, n)
	for _, tt := range []struct {
		name string
		load func(string) (*Rules, error)
	}{
		{"Load", Load},
		{"yaml", loadYAML},
	} {
		b.Run(tt.name+"/"+sizeName(n), func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				got, err := tt.load(path)
				if err != nil {
					b.Fatal(err)
				}
				if len(got.Rules) != n {
					b.Fatalf("loaded %d rules, want %d", len(got.Rules), n)
				}
			}
		})
	}
}

// BenchmarkReload measures what a reload of a 100k-rule file costs: Load
// and then NewMatcher, on each table; and, as it was before issue 6, the
// yaml.v3 path and cidranger.
func BenchmarkReload(b *testing.B) {
	const n = 100_000
	path, size := benchRulesFile(b, n)
	type variant struct {
		name     string
		load     func(string) (*Rules, error)
		newTable func() table
	}
	var variants []variant
	for _, tab := range tables {
		variants = append(variants, variant{tab.name, Load, tab.new})
	}
	variants = append(variants, variant{"yaml+cidranger", loadYAML, newRangerTable})
	for _, v := range variants {
		b.Run(v.name+"/"+sizeName(n), func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				r, err := v.load(path)
				if err != nil {
					b.Fatal(err)
				}
				m, err := newMatcher(r.Rules, v.newTable)
				if err != nil {
					b.Fatal(err)
				}
				if m.Len() != n {
					b.Fatalf("Matcher holds %d rules, want %d", m.Len(), n)
				}
			}
		})
	}
}
