package allowlist

import "net/netip"

// table is the longest-prefix-match table behind a [Matcher]: it maps
// normalised blocks to the index of the rule that owns them. Two tables
// exist, bartTable (the default) and rangerTable (cidranger, in the tests
// only, to measure against); matcher.go says why, with figures.
//
// A table is filled by one goroutine, then only read, by many at once.
type table interface {
	// insert adds block p, already normalised and not yet in the table,
	// for rule i.
	insert(p netip.Prefix, i int) error

	// lookup returns the rule of the longest block that holds a, which is
	// valid and not IPv4-mapped.
	lookup(a netip.Addr) (i int, ok bool)
}
