package allowlist

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"go.yaml.in/yaml/v3"
)

// Rule is one allowlisted CIDR block of a route.
//
// The zero Rule is not valid: a rule needs an ID and a CIDR.
type Rule struct {
	// ID is the rule's UUID in its canonical lower-case form. It names the
	// rule in the CLI and in audit logs.
	ID string

	// CIDR is the block of client addresses the rule admits. It is
	// normalised: host bits are zero (Masked) and an IPv4-mapped IPv6 block
	// (::ffff:10.0.0.0/104) is written as its IPv4 block (10.0.0.0/8).
	// 0.0.0.0/0 and ::/0 are valid.
	CIDR netip.Prefix

	// Description says whose the block is, for people. It may be empty.
	Description string

	// CreatedAt is when the rule was made; zero if the file does not say.
	CreatedAt time.Time

	// UpdatedAt is when the rule was last changed; zero if the file does not
	// say.
	UpdatedAt time.Time

	// Line is the 1-based line of the rule in its file, or 0 if the rule
	// did not come from a file. It only serves error messages.
	Line int
}

// Rules is the content of one rules file, in file order.
//
// A nil *Rules or an empty Rules holds no rules and so grants no access.
// Rules is a plain value: it is not safe for concurrent mutation, but a
// Rules nobody changes may be read from many goroutines.
type Rules struct {
	Rules []Rule
}

// Prefixes returns the blocks of the rules, in file order. It returns nil
// for a nil or empty r.
func (r *Rules) Prefixes() []netip.Prefix {
	if r == nil || len(r.Rules) == 0 {
		return nil
	}
	ps := make([]netip.Prefix, len(r.Rules))
	for i, rule := range r.Rules {
		ps[i] = rule.CIDR
	}
	return ps
}

// Validate checks rules that were built in code, such as by the CLI before
// it writes a file: every rule needs a UUID id and a valid, normalised CIDR,
// and no two rules may share an id or a block. It reports every problem at
// once as [*ParseError] values joined with [errors.Join]; a problem of a rule
// whose Line is 0 names the rule by its position. A nil or empty r is valid.
func (r *Rules) Validate() error {
	if r == nil {
		return nil
	}
	var errs []error
	idOK := make([]bool, len(r.Rules))
	cidrOK := make([]bool, len(r.Rules))
	for i, rule := range r.Rules {
		fail := func(format string, args ...any) {
			errs = append(errs, ruleError(i, rule.Line, fmt.Sprintf(format, args...)))
		}
		switch {
		case rule.ID == "":
			fail("%s", msgMissingID)
		case !isUUID(rule.ID):
			fail("id %q is not a UUID; want the form %s", rule.ID, exampleID)
		default:
			idOK[i] = true
		}
		n := normalize(rule.CIDR)
		switch {
		case !rule.CIDR.IsValid():
			fail("%s", msgMissingCIDR)
		case rule.CIDR.Masked() != rule.CIDR:
			fail("cidr %s has host bits set; did you mean %s?", rule.CIDR, n)
		case n != rule.CIDR:
			fail("cidr %s is an IPv4-mapped block; write %s", rule.CIDR, n)
		default:
			cidrOK[i] = true
		}
	}
	errs = append(errs, checkDuplicates(r.Rules, idOK, cidrOK)...)
	return errors.Join(errs...)
}

// Marshal returns r as a rules file in the format [Parse] reads, so that
// Parse(Marshal(r)) gives back r, apart from Line and with ids in lower
// case, as Parse spells them. It validates r first and
// returns the error of [Rules.Validate] if r is not valid. A nil r marshals
// as an empty list of rules.
func (r *Rules) Marshal() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("marshaling rules: %w", err)
	}
	f := fileOut{Rules: []ruleOut{}}
	if r != nil {
		for _, rule := range r.Rules {
			f.Rules = append(f.Rules, ruleOut{
				ID:          strings.ToLower(rule.ID),
				CIDR:        rule.CIDR.String(),
				Description: description(rule.Description),
				CreatedAt:   rule.CreatedAt,
				UpdatedAt:   rule.UpdatedAt,
			})
		}
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(f); err != nil {
		return nil, fmt.Errorf("marshaling rules: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("marshaling rules: %w", err)
	}
	return b.Bytes(), nil
}

// fileOut and ruleOut fix the key order and spelling of a written file.
type fileOut struct {
	Rules []ruleOut `yaml:"rules"`
}

type ruleOut struct {
	ID          string      `yaml:"id"`
	CIDR        string      `yaml:"cidr"`
	Description description `yaml:"description,omitempty"`
	CreatedAt   time.Time   `yaml:"created_at,omitempty"`
	UpdatedAt   time.Time   `yaml:"updated_at,omitempty"`
}

// description is a rule's description as Marshal writes it.
type description string

// MarshalYAML writes a description with control characters, line breaks or
// edge spaces double-quoted, with escapes. Left to itself, yaml.v3 would
// write "\t\n" as a literal block scalar that starts with a tab, which its
// own parser then refuses, and a file the CLI wrote could not be read back.
func (d description) MarshalYAML() (any, error) {
	s := string(d)
	if strings.TrimSpace(s) == s && !strings.ContainsFunc(s, awkwardRune) {
		return s, nil
	}
	return &yaml.Node{Kind: yaml.ScalarNode, Style: yaml.DoubleQuotedStyle, Tag: "!!str", Value: s}, nil
}

// awkwardRune reports whether r is a control character or a YAML line
// break or byte-order mark, which a plain or block scalar cannot carry
// safely.
func awkwardRune(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x2028 || r == 0x2029 || r == 0xfeff || r == utf8.RuneError
}

// ParseCIDR parses s as a rule's block, the way a rules file's cidr is read:
// s must be "a.b.c.d/n" or "ipv6/n" with no host bits set. An IPv4-mapped
// IPv6 block is accepted and returned as its IPv4 block. The error says what
// was given and what is expected, with a fix where there is an obvious one
// (a bare address, host bits set).
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		// ParseAddr takes "fe80::1%eth0/64" as an address with zone
		// "eth0/64", so only a string without a slash is a bare address.
		if a, aerr := netip.ParseAddr(s); aerr == nil && !strings.Contains(s, "/") {
			a = a.Unmap().WithZone("")
			return netip.Prefix{}, fmt.Errorf("cidr %q has no prefix length; write %s for a single address",
				s, netip.PrefixFrom(a, a.BitLen()))
		}
		return netip.Prefix{}, fmt.Errorf("bad cidr %q: want %s", s, cidrForm)
	}
	n := normalize(p)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("cidr %s has host bits set; did you mean %s?", s, n)
	}
	return n, nil
}

// normalize returns p with its host bits cleared and, if it is an
// IPv4-mapped IPv6 block, as the IPv4 block it maps. Lookups Unmap the
// client's address, so a mapped block left as IPv6 could never match.
func normalize(p netip.Prefix) netip.Prefix {
	p = p.Masked()
	// Masking clears bit 95 of any block shorter than /96, so only a block
	// of /96 or longer can still carry the ::ffff: prefix here.
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

const (
	exampleID      = "38c466b6-dcfb-4869-b5ac-40420b786fb4"
	cidrForm       = "a.b.c.d/n or ipv6/n"
	msgMissingID   = "missing id; want a UUID such as " + exampleID
	msgMissingCIDR = "missing cidr; want " + cidrForm
)

// isUUID reports whether s is a UUID in the hyphenated 8-4-4-4-12 form.
// uuid.Parse also takes the {…}, urn:uuid: and bare-hex forms, which would
// let two spellings of one id slip past the duplicate check.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	_, err := uuid.Parse(s)
	return err == nil
}

// ruleError returns a problem of the i-th rule, placed at line if known and
// otherwise named by position.
func ruleError(i, line int, msg string) *ParseError {
	if line > 0 {
		return &ParseError{Line: line, Msg: msg}
	}
	return &ParseError{Msg: fmt.Sprintf("rule %d: %s", i+1, msg)}
}

// where names rule i for a message about another rule.
func where(i int, rule Rule) string {
	if rule.Line > 0 {
		return fmt.Sprintf("the rule at line %d", rule.Line)
	}
	return fmt.Sprintf("rule %d", i+1)
}

// checkDuplicates reports rules that repeat an earlier rule's id or block.
// Only ids and blocks marked ok take part, so that one bad value is reported
// once rather than also as a duplicate.
func checkDuplicates(rules []Rule, idOK, cidrOK []bool) []error {
	var errs []error
	ids := make(map[string]int, len(rules))
	cidrs := make(map[netip.Prefix]int, len(rules))
	for i, rule := range rules {
		if idOK[i] {
			id := strings.ToLower(rule.ID)
			if j, dup := ids[id]; dup {
				errs = append(errs, ruleError(i, rule.Line,
					fmt.Sprintf("duplicate id %s; first used by %s", rule.ID, where(j, rules[j]))))
			} else {
				ids[id] = i
			}
		}
		if cidrOK[i] {
			if j, dup := cidrs[rule.CIDR]; dup {
				errs = append(errs, ruleError(i, rule.Line,
					fmt.Sprintf("duplicate cidr %s; %s has the same block", rule.CIDR, where(j, rules[j]))))
			} else {
				cidrs[rule.CIDR] = i
			}
		}
	}
	return errs
}

// WholeFamily returns "IPv4" or "IPv6" when block p admits every address
// of that family, and "" otherwise: 0.0.0.0/0, ::/0, and
// ::ffff:0.0.0.0/96, which after the unmapping of IPv4-mapped addresses
// is all of IPv4. Such a rule leaves only the certificate check between
// the internet and a route; it is valid, but worth a warning.
func WholeFamily(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	p = normalize(p)
	switch {
	case p.Bits() != 0:
		return ""
	case p.Addr().Is4():
		return "IPv4"
	}
	return "IPv6"
}

// Warnings returns a sentence for each rule that admits a whole address
// family (see [WholeFamily]), naming the rule by line or position.
func (r *Rules) Warnings() []string {
	if r == nil {
		return nil
	}
	var out []string
	for i, rule := range r.Rules {
		if fam := WholeFamily(rule.CIDR); fam != "" {
			out = append(out, fmt.Sprintf("%s (%s, id %s) admits every %s address: only the client certificate keeps strangers out", where(i, rule), rule.CIDR, rule.ID, fam))
		}
	}
	return out
}
