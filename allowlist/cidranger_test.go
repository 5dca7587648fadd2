package allowlist

import (
	"net"
	"net/netip"

	"github.com/yl2chen/cidranger"
)

// rangerTable is a table backed by a cidranger path-compressed trie, the
// Matcher's first table. It is no longer the default (see [NewMatcher])
// and stays for the benchmarks and tests that compare the two.
type rangerTable struct {
	r cidranger.Ranger
}

func newRangerTable() table {
	return &rangerTable{r: cidranger.NewPCTrieRanger()}
}

// rangerEntry is the trie's value for one rule: the block and the index of
// the rule that owns it, so that a lookup can say which rule matched.
type rangerEntry struct {
	network net.IPNet
	rule    int
}

var _ cidranger.RangerEntry = (*rangerEntry)(nil)

// Network returns the rule's block, as cidranger wants it.
func (e *rangerEntry) Network() net.IPNet { return e.network }

func (r *rangerTable) insert(p netip.Prefix, i int) error {
	return r.r.Insert(&rangerEntry{network: ipNet(p), rule: i})
}

// lookup pays for cidranger's API with a few small heap allocations on
// each call: the net.IP handed through its interface, the []uint32 it
// converts that to, and the result slice of ContainingNetworks (Contains
// would spare that slice but cannot say which rule matched).
func (r *rangerTable) lookup(a netip.Addr) (int, bool) {
	var ip net.IP
	if a.Is4() {
		b := a.As4()
		ip = b[:]
	} else {
		b := a.As16()
		ip = b[:]
	}
	entries, err := r.r.ContainingNetworks(ip)
	if err != nil || len(entries) == 0 {
		return 0, false
	}
	// ContainingNetworks lists the blocks from shortest to longest prefix.
	e, ok := entries[len(entries)-1].(*rangerEntry)
	if !ok {
		return 0, false
	}
	return e.rule, true
}

// ipNet converts a normalised prefix to the net.IPNet cidranger stores. An
// IPv4 block must be 4 bytes long: cidranger files a 16-byte address under
// IPv4 only if it is IPv4-mapped, and normalize has already unmapped those.
func ipNet(p netip.Prefix) net.IPNet {
	a := p.Addr()
	return net.IPNet{
		IP:   net.IP(a.AsSlice()),
		Mask: net.CIDRMask(p.Bits(), a.BitLen()),
	}
}
