package allowlist

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/yl2chen/cidranger"
)

// Matcher answers whether an address is inside any of a route's rules.
//
// A Matcher is immutable once [NewMatcher] returns it, and safe for
// concurrent use by many goroutines. A nil *Matcher, and one built from no
// rules, matches nothing: the route then admits no one (fail closed).
//
// The table behind it is a cidranger path-compressed trie; it is kept
// behind this type so that another table (such as github.com/gaissmai/bart)
// can be measured in its place without changing callers.
type Matcher struct {
	ranger cidranger.Ranger
	ids    []string // ids of the rules, in file order
}

// entry is the trie's value for one rule: the block and the id of the rule
// that owns it, so that Lookup can say which rule admitted a client.
type entry struct {
	network net.IPNet
	id      string
}

var _ cidranger.RangerEntry = (*entry)(nil)

// Network returns the rule's block, as cidranger wants it.
func (e *entry) Network() net.IPNet { return e.network }

// NewMatcher builds a Matcher from rules, normally the Rules of a parsed
// file. Each rule's block is normalised (host bits cleared, IPv4-mapped
// blocks made IPv4) before it goes into the table. NewMatcher fails if a
// rule has no valid block or two rules have the same block; it does not
// check ids, which [Parse] and [Rules.Validate] do. The errors are
// [*ParseError] values joined with [errors.Join]. No rules gives a Matcher
// that matches nothing.
//
// NewMatcher keeps no reference to rules.
func NewMatcher(rules []Rule) (*Matcher, error) {
	m := &Matcher{
		ranger: cidranger.NewPCTrieRanger(),
		ids:    make([]string, 0, len(rules)),
	}
	var errs []error
	seen := make(map[netip.Prefix]int, len(rules))
	for i, rule := range rules {
		if !rule.CIDR.IsValid() {
			errs = append(errs, ruleError(i, rule.Line, msgMissingCIDR))
			continue
		}
		p := normalize(rule.CIDR)
		if j, dup := seen[p]; dup {
			// cidranger would silently keep one of the two, and Lookup
			// would then name the wrong rule in the audit log.
			errs = append(errs, ruleError(i, rule.Line,
				fmt.Sprintf("duplicate cidr %s; %s has the same block", p, where(j, rules[j]))))
			continue
		}
		seen[p] = i
		e := &entry{network: ipNet(p), id: rule.ID}
		if err := m.ranger.Insert(e); err != nil {
			errs = append(errs, ruleError(i, rule.Line, fmt.Sprintf("adding cidr %s to the table: %v", p, err)))
			continue
		}
		m.ids = append(m.ids, rule.ID)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
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

// Lookup reports whether addr is inside one of the rules, and if so the id
// of the rule that admits it; when rules nest, that is the most specific
// one. addr is Unmap()ed first, so ::ffff:10.1.2.3 is looked up as
// 10.1.2.3; IPv4 addresses then match only IPv4 rules and IPv6 addresses
// only IPv6 rules. A zone is ignored. An invalid (zero) addr, or a nil m,
// matches nothing.
//
// Lookup runs once per connection. cidranger's API forces a few small heap
// allocations on each call: the net.IP handed through its interface, the
// []uint32 it converts that to, and the result slice of ContainingNetworks
// (Contains would spare that slice but cannot say which rule matched).
// BenchmarkLookup measures them.
func (m *Matcher) Lookup(addr netip.Addr) (ruleID string, ok bool) {
	if m == nil || len(m.ids) == 0 || !addr.IsValid() {
		return "", false
	}
	addr = addr.Unmap()
	var ip net.IP
	if addr.Is4() {
		a := addr.As4()
		ip = a[:]
	} else {
		a := addr.As16()
		ip = a[:]
	}
	entries, err := m.ranger.ContainingNetworks(ip)
	if err != nil || len(entries) == 0 {
		return "", false
	}
	// ContainingNetworks lists the blocks from shortest to longest prefix.
	e, ok := entries[len(entries)-1].(*entry)
	if !ok {
		return "", false
	}
	return e.id, true
}

// Len returns the number of rules in force; 0 for a nil m.
func (m *Matcher) Len() int {
	if m == nil {
		return 0
	}
	return len(m.ids)
}

// IDs returns the ids of the rules in force, in file order. The slice is a
// copy the caller may keep and change; it is empty for a nil m or one with
// no rules.
func (m *Matcher) IDs() []string {
	if m == nil {
		return nil
	}
	return append([]string(nil), m.ids...)
}
