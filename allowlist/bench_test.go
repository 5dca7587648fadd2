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

func BenchmarkLookup(b *testing.B) {
	for _, family := range []string{"ipv4", "ipv6"} {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%s/%d", family, n), func(b *testing.B) {
				v6 := family == "ipv6"
				ps := genPrefixes(n, v6)
				m, err := NewMatcher(rulesOf(ps))
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

func BenchmarkNewMatcher(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			rules := rulesOf(genPrefixes(n, false))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NewMatcher(rules); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkLoad(b *testing.B) {
	const n = 100_000
	ps := append(genPrefixes(n/2, false), genPrefixes(n/2, true)...)
	r := &Rules{Rules: rulesOf(ps)}
	for i := range r.Rules {
		r.Rules[i].Description = fmt.Sprintf("customer %d office", i)
		r.Rules[i].CreatedAt = time.Date(2019, 7, 17, 0, 5, 52, 0, time.UTC).Add(time.Duration(i) * time.Minute)
	}
	data, err := r.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		got, err := Load(path)
		if err != nil {
			b.Fatal(err)
		}
		if len(got.Rules) != n {
			b.Fatalf("Load gave %d rules, want %d", len(got.Rules), n)
		}
	}
}
