package allowlist

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/spacegate/spacegate/internal/safefile"
)

// Parse parses a rules file. It reads the whole of data and reports every
// problem it finds, not just the first: the error is an [errors.Join] of
// [*ParseError] values in line order, and the *Rules is then nil, so a
// broken file never yields a partial set of rules.
//
// Parse rejects unknown keys, a rule without an id or cidr, an id that is not
// a UUID, a cidr that is not a block or has host bits set, a time that is
// not RFC 3339, and two rules with the same id or the same block (after
// normalisation). Empty data, or "rules: []", gives an empty *Rules, which
// grants no access.
func Parse(data []byte) (*Rules, error) {
	return parse("", data)
}

// Load reads and parses the rules file at path, as [ParseFile] does. It
// reads through [safefile.ReadFile]: a path that is not a regular file
// (a FIFO, a device, a directory) or a file over [safefile.Rules] is an
// error naming path, matching [safefile.ErrNotRegular] or
// [safefile.ErrTooLarge]; a missing file matches [io/fs.ErrNotExist].
func Load(path string) (*Rules, error) {
	data, err := safefile.ReadFile(path, safefile.Rules)
	if err != nil {
		if _, ok := errors.AsType[*fs.PathError](err); ok {
			return nil, fmt.Errorf("reading rules file: %w", err)
		}
		return nil, err // it names the file and its kind
	}
	return parse(path, data)
}

// ParseFile parses data, read from the rules file at path, as [Parse]
// does, but with every *ParseError's File set to path, so that messages
// read "path:line: msg".
func ParseFile(path string, data []byte) (*Rules, error) {
	return parse(path, data)
}

// fileYAML is what the Decoder fills. KnownFields(true) makes it reject
// unknown top-level keys. Rules is kept as a node because yaml.Node.Decode
// does not carry KnownFields over, and because the rules are walked by hand
// to know the line of each rule and of each bad value.
type fileYAML struct {
	Rules yaml.Node `yaml:"rules"`
}

// The keys of a rule, in the order Marshal writes them.
const (
	keyID = iota
	keyCIDR
	keyDescription
	keyCreatedAt
	keyUpdatedAt
	numKeys

	ruleKeyList = "id, cidr, description, created_at or updated_at"
)

// ruleKey returns the index of a rule key, or -1 for an unknown key.
func ruleKey(s string) int {
	switch s {
	case "id":
		return keyID
	case "cidr":
		return keyCIDR
	case "description":
		return keyDescription
	case "created_at":
		return keyCreatedAt
	case "updated_at":
		return keyUpdatedAt
	}
	return -1
}

// parser collects the problems of one file.
type parser struct {
	file string
	errs []error
}

func (p *parser) add(line int, format string, args ...any) {
	p.errs = append(p.errs, &ParseError{Line: line, Msg: fmt.Sprintf(format, args...)})
}

// parse parses data, the content of file, taking the fast path of
// scanRules when it can and the yaml.v3 path otherwise. The fast path
// gives up, and leaves the file to the yaml.v3 path, on anything unusual
// and on any problem, so that every problem is reported there, with its
// line, in the one way.
func parse(file string, data []byte) (*Rules, error) {
	if r, ok := scanRules(data); ok {
		return r, nil
	}
	return parseYAML(file, data)
}

// parseYAML parses data with yaml.v3 and walks the node tree by hand to
// check every rule and place every problem at its line. It handles any
// YAML; for a 100k-rule file it takes about a second, mostly in building
// the tree, which is why parse tries scanRules first.
func parseYAML(file string, data []byte) (*Rules, error) {
	p := &parser{file: file}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f fileYAML
	err := dec.Decode(&f)
	var te *yaml.TypeError
	switch {
	case errors.Is(err, io.EOF):
		// No document at all: an empty file or only comments.
		return &Rules{}, nil
	case errors.As(err, &te):
		// The decoder goes on past type errors, so f.Rules is still
		// worth walking for more problems.
		for _, msg := range te.Errors {
			p.typeError(msg)
		}
	case err != nil:
		// A syntax error stops the YAML parser; nothing after it can be
		// trusted.
		p.syntaxError(err)
		return nil, p.result()
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		p.add(extra.Line, "want one YAML document, found a second one")
	case !errors.Is(err, io.EOF):
		p.syntaxError(err)
	}
	rules := p.rules(&f.Rules)
	if err := p.result(); err != nil {
		return nil, err
	}
	return &Rules{Rules: rules}, nil
}

// result returns the problems found, in line order, with the file name set.
func (p *parser) result() error {
	if len(p.errs) == 0 {
		return nil
	}
	for _, err := range p.errs {
		err.(*ParseError).File = p.file
	}
	slices.SortStableFunc(p.errs, func(a, b error) int {
		return cmp.Compare(a.(*ParseError).Line, b.(*ParseError).Line)
	})
	return errors.Join(p.errs...)
}

// syntaxError records an error from the YAML parser, which reads
// "yaml: line N: msg", or "yaml: msg" when it knows no line.
func (p *parser) syntaxError(err error) {
	line, msg := splitLine(strings.TrimPrefix(err.Error(), "yaml: "))
	p.add(line, "invalid YAML: %s", msg)
}

// typeError records one message of a *yaml.TypeError, "line N: msg". The
// decoder only decodes the top level (fileYAML) itself, so its messages are
// about that level, and are reworded to leave out Go type names.
func (p *parser) typeError(s string) {
	line, msg := splitLine(s)
	if rest, ok := strings.CutPrefix(msg, "field "); ok {
		if name, _, ok := strings.Cut(rest, " not found in type "); ok {
			p.add(line, "unknown key %q; want rules", name)
			return
		}
	}
	if rest, ok := strings.CutPrefix(msg, "cannot unmarshal !!"); ok {
		tag, _, _ := strings.Cut(rest, " ")
		p.add(line, "want a mapping with a rules key, got %s", tagName(tag))
		return
	}
	p.add(line, "%s", msg)
}

// tagName names a YAML core tag, without its "!!", for "got ..." in
// messages.
func tagName(tag string) string {
	switch tag {
	case "seq":
		return "a list"
	case "map":
		return "a mapping"
	case "str":
		return "a string"
	case "int", "float":
		return "a number"
	case "bool":
		return "a boolean"
	case "null":
		return "nothing"
	case "timestamp":
		return "a time"
	}
	return "!!" + tag
}

// splitLine splits "line N: msg" into N and msg; without that prefix, it
// returns 0 and s.
func splitLine(s string) (int, string) {
	rest, ok := strings.CutPrefix(s, "line ")
	if !ok {
		return 0, s
	}
	num, msg, ok := strings.Cut(rest, ": ")
	if !ok {
		return 0, s
	}
	n, err := strconv.Atoi(num)
	if err != nil {
		return 0, s
	}
	return n, msg
}

// rules walks the value of the rules key.
func (p *parser) rules(n *yaml.Node) []Rule {
	n = deref(n)
	switch {
	case n.Kind == 0 || isNull(n):
		// No rules key, or "rules:" with nothing after it.
		return nil
	case n.Kind != yaml.SequenceNode:
		p.add(n.Line, "rules must be a list of rules, got %s", describe(n))
		return nil
	}
	rules := make([]Rule, 0, len(n.Content))
	idOK := make([]bool, 0, len(n.Content))
	cidrOK := make([]bool, 0, len(n.Content))
	for _, item := range n.Content {
		rule, iok, cok, ok := p.rule(item)
		if !ok {
			continue
		}
		rules = append(rules, rule)
		idOK = append(idOK, iok)
		cidrOK = append(cidrOK, cok)
	}
	p.errs = append(p.errs, checkDuplicates(rules, idOK, cidrOK)...)
	return rules
}

// rule walks one item of the rules list. ok is false if the item is not a
// mapping at all; idOK and cidrOK say whether the id and block are valid and
// may take part in the duplicate checks.
func (p *parser) rule(n *yaml.Node) (rule Rule, idOK, cidrOK, ok bool) {
	n = deref(n)
	rule.Line = n.Line
	if n.Kind != yaml.MappingNode {
		p.add(n.Line, "rule must be a mapping of %s; got %s", ruleKeyList, describe(n))
		return rule, false, false, false
	}
	var (
		vals     [numKeys]*yaml.Node
		keyLine  [numKeys]int
		reported [numKeys]bool // a bad value was reported; don't call it missing too
	)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		idx := -1
		if k.Kind == yaml.ScalarNode {
			idx = ruleKey(k.Value)
		}
		switch {
		case idx < 0:
			p.add(k.Line, "unknown key %s in rule; want %s", describe(k), ruleKeyList)
		case keyLine[idx] != 0:
			p.add(k.Line, "key %s repeated in rule; first at line %d", k.Value, keyLine[idx])
		case v.Kind != yaml.ScalarNode:
			keyLine[idx] = k.Line
			reported[idx] = true
			p.add(v.Line, "%s must be a single value, got %s", k.Value, describe(v))
		default:
			keyLine[idx] = k.Line
			if !isNull(v) {
				vals[idx] = v
			}
		}
	}

	switch v := vals[keyID]; {
	case v == nil || v.Value == "":
		if !reported[keyID] {
			p.add(rule.Line, "%s", msgMissingID)
		}
	case !isUUID(v.Value):
		p.add(v.Line, "id %q is not a UUID; want the form %s", v.Value, exampleID)
	default:
		// Keep ids in one spelling so that the CLI's lookups by id and
		// the duplicate check agree.
		rule.ID = strings.ToLower(v.Value)
		idOK = true
	}

	switch v := vals[keyCIDR]; {
	case v == nil || v.Value == "":
		if !reported[keyCIDR] {
			p.add(rule.Line, "%s", msgMissingCIDR)
		}
	default:
		pfx, err := ParseCIDR(v.Value)
		if err != nil {
			p.add(v.Line, "%v", err)
		} else {
			rule.CIDR = pfx
			cidrOK = true
		}
	}

	if v := vals[keyDescription]; v != nil {
		rule.Description = v.Value
	}
	rule.CreatedAt = p.time(vals[keyCreatedAt], "created_at")
	rule.UpdatedAt = p.time(vals[keyUpdatedAt], "updated_at")
	return rule, idOK, cidrOK, true
}

// time parses the value of a timestamp key; absent gives the zero time.
func (p *parser) time(v *yaml.Node, key string) time.Time {
	if v == nil {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339, v.Value)
	if err != nil {
		p.add(v.Line, "bad %s %q: want an RFC 3339 time such as 2019-07-17T00:05:52Z", key, v.Value)
		return time.Time{}
	}
	return t
}

// deref follows an alias (*anchor) to the node it names.
func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n != nil && n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what a node holds, for "got ..." in messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.ScalarNode:
		if isNull(n) {
			return "nothing"
		}
		return strconv.Quote(n.Value)
	}
	return "nothing"
}
