package allowlist

import (
	"net/netip"

	"github.com/gaissmai/bart"
)

// bartTable is a table backed by a bart.Table, a multibit trie with a
// stride of 8 bits that works on netip values directly: a lookup walks at
// most 4 (IPv4) or 16 (IPv6) nodes and allocates nothing.
type bartTable struct {
	t bart.Table[int]
}

func newBartTable() table { return new(bartTable) }

func (b *bartTable) insert(p netip.Prefix, i int) error {
	b.t.Insert(p, i)
	return nil
}

func (b *bartTable) lookup(a netip.Addr) (int, bool) {
	return b.t.Lookup(a)
}
