package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/spacegate/spacegate/allowlist"
	"github.com/spacegate/spacegate/config"
)

// exampleConfig is the documented example config, relative to this package.
var exampleConfig = filepath.Join("..", "..", "deploy", "spacegate.example.yaml")

func readExample(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestExampleConfigParses(t *testing.T) {
	cfg, err := config.Parse(readExample(t), exampleConfig)
	if err != nil {
		for _, p := range config.Problems(err) {
			t.Error(p)
		}
		t.FailNow()
	}
	var protocols []string
	for _, r := range cfg.Routes {
		protocols = append(protocols, r.Protocol)
	}
	for _, want := range []string{config.ProtocolPostgres, config.ProtocolRedis} {
		if !slices.Contains(protocols, want) {
			t.Errorf("example config has no %s route; it has %q", want, protocols)
		}
	}
}

// TestExampleConfigHasEveryKey keeps the example complete: a key added to
// config.Config must be shown and explained in the example too.
func TestExampleConfigHasEveryKey(t *testing.T) {
	var doc yaml.Node
	if err := yaml.Unmarshal(readExample(t), &doc); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	yamlKeys(&doc, "", have)
	want := map[string]bool{}
	structKeys(reflect.TypeFor[config.Config](), "", map[reflect.Type]bool{}, want)
	if len(want) < 20 {
		t.Fatalf("found only %d keys in config.Config; is the yaml tag walk broken? %v", len(want), want)
	}
	for k := range want {
		if !have[k] {
			t.Errorf("example config does not show the key %s", k)
		}
	}
}

// yamlKeys adds the dotted path of every mapping key under n to keys;
// sequences add no element of their own, so routes.name stands for the name
// of any route.
func yamlKeys(n *yaml.Node, prefix string, keys map[string]bool) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			yamlKeys(c, prefix, keys)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := prefix + n.Content[i].Value
			keys[k] = true
			yamlKeys(n.Content[i+1], k+".", keys)
		}
	}
}

// structKeys adds the dotted path of every yaml key of t to keys, as
// yamlKeys names them. A struct type met a second time (a route's tls
// overrides) adds only its own key: its keys are shown where first met.
func structKeys(t reflect.Type, prefix string, seen map[reflect.Type]bool, keys map[string]bool) {
	seen[t] = true
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		keys[prefix+name] = true
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && !seen[ft] {
			structKeys(ft, prefix+name+".", seen, keys)
		}
	}
}

// documentation are the address blocks reserved for examples (RFC 5737,
// RFC 3849): an example must not name anybody's real network.
var documentation = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("2001:db8::/32"),
}

func TestExampleRulesFiles(t *testing.T) {
	cfg, err := config.Parse(readExample(t), exampleConfig)
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	for _, r := range cfg.Routes {
		rules, err := allowlist.Load(r.IPRulesFile)
		if err != nil {
			t.Errorf("route %s: %v", r.Name, err)
			continue
		}
		if len(rules.Rules) == 0 {
			t.Errorf("route %s: %s has no rules; an example should show one", r.Name, r.IPRulesFile)
		}
		if len(rules.Rules) > r.MaxIPRules {
			t.Errorf("route %s: %d rules, more than max_ip_rules %d", r.Name, len(rules.Rules), r.MaxIPRules)
		}
		for _, p := range rules.Prefixes() {
			if !slices.ContainsFunc(documentation, func(d netip.Prefix) bool { return d.Bits() <= p.Bits() && d.Contains(p.Addr()) }) {
				t.Errorf("route %s: rule %s is not inside a documentation block %v", r.Name, p, documentation)
			}
		}
	}
}
