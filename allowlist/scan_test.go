package allowlist

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// checkScanAgrees fails t if scanRules accepts in but parseYAML does not,
// or gives other rules, and returns whether scanRules accepted it.
func checkScanAgrees(t *testing.T, in []byte) bool {
	t.Helper()
	fast, ok := scanRules(in)
	if !ok {
		if fast != nil {
			t.Errorf("scanRules turned the file down but returned rules %+v", fast)
		}
		return false
	}
	slow, err := parseYAML("", in)
	if err != nil {
		t.Errorf("scanRules accepted a file parseYAML refuses (%v):\n%s", err, in)
		return true
	}
	if diff := rulesDiff(fast, slow); diff != "" {
		t.Errorf("scanRules and parseYAML disagree: %s\nfile:\n%s", diff, in)
	}
	return true
}

// rulesDiff describes how a and b differ, or returns "" if they are the
// same, down to an empty list against none and the zone of each time.
func rulesDiff(a, b *Rules) string {
	switch {
	case a == nil || b == nil:
		return fmt.Sprintf("%v against %v", a, b)
	case (a.Rules == nil) != (b.Rules == nil):
		return fmt.Sprintf("rules %#v against %#v", a.Rules, b.Rules)
	case len(a.Rules) != len(b.Rules):
		return fmt.Sprintf("%d rules against %d", len(a.Rules), len(b.Rules))
	}
	for i, x := range a.Rules {
		y := b.Rules[i]
		xc, xco := x.CreatedAt.Zone()
		yc, yco := y.CreatedAt.Zone()
		xu, xuo := x.UpdatedAt.Zone()
		yu, yuo := y.UpdatedAt.Zone()
		if !ruleEqual(x, y) || xc != yc || xco != yco || xu != yu || xuo != yuo {
			return fmt.Sprintf("rule %d: %+v against %+v", i, x, y)
		}
	}
	return ""
}

// TestScanRulesAgrees runs the files of the Parse tests through both paths
// of parse: the fast path must turn down every broken file, and what it
// accepts it must read as the yaml.v3 path does.
func TestScanRulesAgrees(t *testing.T) {
	// The files of parseTests that are outside the fast path's shape.
	slowOnly := map[string]bool{"everything": true, "aliases": true}
	for _, tt := range parseTests {
		t.Run(tt.name, func(t *testing.T) {
			if fast := checkScanAgrees(t, []byte(tt.in)); fast == slowOnly[tt.name] {
				t.Errorf("scanRules took the file: %v, want %v", fast, !slowOnly[tt.name])
			}
		})
	}
	for _, tt := range parseErrorTests {
		t.Run(tt.name, func(t *testing.T) {
			if r, ok := scanRules([]byte(tt.in)); ok {
				t.Errorf("scanRules accepted a broken file, with %+v", r)
			}
		})
	}
}

// TestScanRulesShapes checks where the fast path's shape ends. fast says
// whether scanRules should take the file; either way, the two paths must
// agree.
func TestScanRulesShapes(t *testing.T) {
	const (
		rule = "  - id: " + id1 + "\n    cidr: 10.0.0.0/8\n"
		// head is a rule with a description left open: the tests add
		// a value and what follows.
		head = "rules:\n  - id: " + id1 + "\n    cidr: 10.0.0.0/8\n    description:"
	)
	tests := []struct {
		name string
		in   string
		fast bool
	}{
		{"comments everywhere", "# a\n\n# b\nrules: # c\n# d\n  - id: " + id1 + " # e\n  # f\n    cidr: 10.0.0.0/8 #g\n\n", true},
		{"no newline at the end", "rules:\n  - id: " + id1 + "\n    cidr: 10.0.0.0/8", true},
		{"items at column 0", "rules:\n- id: " + id1 + "\n  cidr: 10.0.0.0/8\n- cidr: 10.1.0.0/16\n  id: " + id2 + "\n", true},
		{"deep indent", "rules:\n      -    id: " + id1 + "\n           cidr: 10.0.0.0/8\n", true},
		{"items indented differently", "rules:\n  - id: " + id1 + "\n    cidr: 10.0.0.0/8\n   - id: " + id2 + "\n     cidr: 10.1.0.0/16\n", false},
		{"keys at two indents", "rules:\n  - id: " + id1 + "\n     cidr: 10.0.0.0/8\n", false},
		{"spaces after colon", "rules:\n  - id:     " + id1 + "   \n    cidr:   10.0.0.0/8\n", true},
		{"upper-case id and trailing spaces", "rules:   \n  - id: 38C466B6-DCFB-4869-B5AC-40420B786FB4   \n    cidr: 10.0.0.0/8   \n", true},
		{"empty list with comment", "rules: []   # none yet\n", true},
		{"empty list then more", "rules: []\n  - id: " + id1 + "\n", false},
		{"empty list and junk", "rules: [] x\n", false},
		{"null rules", "rules: ~\n", false},
		{"rules with nothing", "# x\nrules:\n\n# y\n", true},
		{"only spaces", "   \n \n", true},
		{"document marker", "---\nrules:\n" + rule, false},
		{"document end", "rules:\n" + rule + "...\n", false},
		{"second document", "rules:\n" + rule + "---\nrules: []\n", false},
		{"directive", "%YAML 1.1\n---\nrules:\n" + rule, false},
		{"crlf", "rules:\r\n  - id: " + id1 + "\r\n    cidr: 10.0.0.0/8\r\n", false},
		{"tab indent", "rules:\n\t- id: " + id1 + "\n", false},
		{"bom", "\ufeffrules:\n" + rule, false},
		{"flow list", "rules: [{id: " + id1 + ", cidr: 10.0.0.0/8}]\n", false},
		{"flow rule", "rules:\n  - {id: " + id1 + ", cidr: 10.0.0.0/8}\n", false},
		{"item on its own line", "rules:\n  -\n    id: " + id1 + "\n    cidr: 10.0.0.0/8\n", false},
		{"nested list", "rules:\n  - - id: " + id1 + "\n", false},
		{"quoted key", "rules:\n  - \"id\": " + id1 + "\n    cidr: 10.0.0.0/8\n", false},
		{"key without space", "rules:\n  - id:" + id1 + "\n    cidr: 10.0.0.0/8\n", false},
		{"space before colon", "rules:\n  - id : " + id1 + "\n    cidr: 10.0.0.0/8\n", false},
		{"top level key after rules", "rules:\n" + rule + "extra: 1\n", false},
		{"top level indented", " rules:\n" + rule, false},
		{"quoted rules key", "\"rules\":\n" + rule, false},
		{"value on the next line", "rules:\n  - id:\n      " + id1 + "\n    cidr: 10.0.0.0/8\n", false},
		{"mapped ipv6 plain", "rules:\n  - id: " + id1 + "\n    cidr: ::ffff:10.0.0.0/104\n", true},
		{"ipv6 everything plain", "rules:\n  - id: " + id1 + "\n    cidr: ::/0\n", true},
		{"cidr ending in colon", "rules:\n  - id: " + id1 + "\n    cidr: 2001:db8::\n", false},
		{"single-quoted", "rules:\n  - id: '" + id1 + "'\n    cidr: '10.0.0.0/8'  # c\n", true},
		{"double-quoted", "rules:\n  - id: \"" + id1 + "\"\n    cidr: \"10.0.0.0/8\"  # c\n", true},
		{"quoted then junk", "rules:\n  - id: \"" + id1 + "\"x\n    cidr: 10.0.0.0/8\n", false},
		{"quoted then comment without space", "rules:\n  - id: \"" + id1 + "\"#x\n    cidr: 10.0.0.0/8\n", false},

		{"description plain", head + " Head office, 3rd floor [east] {x} a#b 'c' \"d\" 100%\n", true},
		{"description comment", head + " office # not part of it\n", true},
		{"description hash only", head + " #\n", false},
		{"description starting with a dash", head + " -office\n", true},
		{"description list", head + " - office\n", false},
		{"description dash alone", head + " -\n", false},
		{"description starting with colon", head + " :office\n", true},
		{"description starting with question mark", head + " ?office\n", true},
		{"description explicit key", head + " ? office\n", false},
		{"description with colon space", head + " a: b\n", false},
		{"description ending in colon", head + " office:\n", false},
		{"description with colon", head + " a:b\n", true},
		{"description null", head + " null\n", true},
		{"description tilde", head + " ~\n", true},
		{"description Null", head + " Null\n", true},
		{"description NULL", head + " NULL\n", true},
		{"description nULL", head + " nULL\n", true},
		{"description empty", head + "\n", true},
		{"description empty quoted", head + " ''\n", true},
		{"description quoted null", head + " \"null\"\n", true},
		{"description true", head + " true\n", true},
		{"description number", head + " 0x1F\n", true},
		{"description time", head + " 2019-07-17T00:05:52Z\n", true},
		{"description single quotes doubled", head + " 'it''s ''here'''\n", true},
		{"description only a doubled quote", head + " ''''\n", true},
		{"description single-quoted with hash", head + " 'a # b' # c\n", true},
		{"description single-quoted open", head + " 'it\n", false},
		{"description double-quoted escape", head + " \"a\\tb\"\n", false},
		{"description double-quoted open", head + " \"a\n  b\"\n", false},
		{"description multi-line plain", head + " Head\n      office\n", false},
		{"description multi-line after comment", head + "\n    # c\n      office\n", false},
		{"description literal", head + " |\n      office\n", false},
		{"description folded", head + " >-\n      office\n", false},
		{"description anchor", head + " &a office\n", false},
		{"description alias", head + " *a\n", false},
		{"description tag", head + " !!str office\n", false},
		{"description flow", head + " [a, b]\n", false},
		{"description mapping", head + " {a: b}\n", false},
		{"description backquote", head + " `x`\n", false},
		{"description at sign", head + " @x\n", false},
		{"description percent", head + " %x\n", false},
		{"description pipe", head + " |x\n", false},
		{"description non-ascii", head + " Büro München, 東京 ☃ 🦀\n", true},
		{"description nbsp before hash", head + " a\u00a0#b\n", true},
		{"description next line", head + " a\u0085b\n", false},
		{"description line separator", head + " a\u2028b\n", false},
		{"description invalid utf-8", head + " a\xffb\n", false},
		{"description control", head + " a\x01b\n", false},
		{"description del", head + " a\x7fb\n", false},
		{"description tab inside", head + " a\tb\n", false},

		{"missing id", "rules:\n  - cidr: 10.0.0.0/8\n", false},
		{"null id", "rules:\n  - id: ~\n    cidr: 10.0.0.0/8\n", false},
		{"empty quoted id", "rules:\n  - id: ''\n    cidr: 10.0.0.0/8\n", false},
		{"null cidr", "rules:\n  - id: " + id1 + "\n    cidr: null\n", false},
		{"urn id", "rules:\n  - id: urn:uuid:" + id1 + "\n    cidr: 10.0.0.0/8\n", false},
		{"null times", "rules:\n" + rule + "    created_at: ~\n    updated_at:\n", true},
		{"times", "rules:\n" + rule + "    created_at: 2019-07-17T02:05:52.5+02:00\n    updated_at: '2020-01-02T03:04:05Z'\n", true},
		{"bad time", "rules:\n" + rule + "    created_at: 2019-07-17\n", false},
		{"repeated key", "rules:\n" + rule + "    cidr: 10.0.0.0/8\n", false},
		{"repeated null key", "rules:\n  - id: " + id1 + "\n    description:\n    cidr: 10.0.0.0/8\n    description: x\n", false},
		{"unknown key", "rules:\n" + rule + "    color: blue\n", false},
		{"duplicate id", "rules:\n" + rule + "  - id: " + strings.ToUpper(id1) + "\n    cidr: 10.1.0.0/16\n", false},
		{"duplicate cidr", "rules:\n" + rule + "  - id: " + id2 + "\n    cidr: ::ffff:10.0.0.0/104\n", false},
		{"host bits", "rules:\n  - id: " + id1 + "\n    cidr: 10.0.0.1/8\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := []byte(tt.in)
			if fast := checkScanAgrees(t, in); fast != tt.fast {
				_, err := parseYAML("", in)
				t.Errorf("scanRules took the file: %v, want %v (yaml.v3 path: %v)\n%s", fast, tt.fast, err, in)
			}
		})
	}
}

// TestScanRulesLarge checks that the fast path takes a large file as
// Marshal writes it, reading it as the yaml.v3 path does, and that it
// leaves that file to the yaml.v3 path as soon as one line of it is wrong,
// so that Parse reports the same problems either way.
func TestScanRulesLarge(t *testing.T) {
	marshal := func(n int) ([]Rule, string) {
		rules := genRules(n)
		for i := range rules {
			switch i % 4 {
			case 1:
				rules[i].Description = ""
			case 2:
				rules[i].UpdatedAt = rules[i].CreatedAt.Add(1e9)
			case 3:
				rules[i].Description = fmt.Sprintf("'team %d' #%d: \"x\"", i, i)
			}
		}
		data, err := (&Rules{Rules: rules}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return rules, string(data)
	}
	if _, data := marshal(10_000); !checkScanAgrees(t, []byte(data)) {
		t.Fatal("scanRules turned down the file Marshal wrote")
	}

	// Broken files are left to the yaml.v3 path, whose cost is the same
	// for ten times fewer rules.
	rules, data := marshal(1000)
	if !checkScanAgrees(t, []byte(data)) {
		t.Fatal("scanRules turned down the file Marshal wrote")
	}
	const victim = 500
	lines := strings.SplitAfter(data, "\n")
	at := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "- id: "+testID(victim)) })
	if at < 0 {
		t.Fatalf("rule %d not found in the file", victim)
	}
	// Each change is to the first line of the victim rule that holds old.
	// valid marks the changes that leave a valid file, only outside the
	// fast path's shape.
	breaks := []struct {
		name     string
		old, new string
		valid    bool
	}{
		{"bad id", "id: ", "id: x", false},
		{"bad cidr", "cidr: ", "cidr: 300.", false},
		{"bare address", "cidr: " + rules[victim].CIDR.String(), "cidr: 2001:db8::1", false},
		{"bad time", "created_at: ", "created_at: 1", false},
		{"unknown key", "cidr: ", "cdir: ", false},
		{"duplicate id", "id: " + testID(victim), "id: " + testID(victim-100), false},
		{"duplicate cidr", "cidr: " + rules[victim].CIDR.String(), "cidr: " + rules[victim-100].CIDR.String(), false},
		{"tab", "cidr: ", "cidr:\t", true},
		{"escape", "id: " + testID(victim), `id: "\x30` + testID(victim)[1:] + `"`, true},
		{"second document", "- id: ", "---\n- id: ", false},
	}
	for _, bb := range breaks {
		t.Run(bb.name, func(t *testing.T) {
			broken := slices.Clone(lines)
			done := false
			for i := at; i < at+5 && !done; i++ {
				if strings.Contains(broken[i], bb.old) {
					broken[i] = strings.Replace(broken[i], bb.old, bb.new, 1)
					done = true
				}
			}
			if !done {
				t.Fatalf("no line of rule %d holds %q", victim, bb.old)
			}
			in := []byte(strings.Join(broken, ""))
			if checkScanAgrees(t, in) {
				t.Fatal("scanRules took the file")
			}
			want, wantErr := parseYAML("f.yaml", in)
			got, err := parse("f.yaml", in)
			if fmt.Sprint(err) != fmt.Sprint(wantErr) {
				t.Errorf("parse gave error %v, want %v", err, wantErr)
			}
			if bb.valid != (wantErr == nil) {
				t.Errorf("yaml.v3 path gave error %v; want one: %v", wantErr, !bb.valid)
			}
			if wantErr == nil {
				if diff := rulesDiff(got, want); diff != "" {
					t.Errorf("parse and parseYAML disagree: %s", diff)
				}
			}
		})
	}
}

// FuzzScanRules checks that whatever file the fast path accepts, the
// yaml.v3 path accepts too and reads as the same rules. Run it for longer
// with
//
//	go test -run '^$' -fuzz FuzzScanRules -fuzztime 2m ./allowlist/
func FuzzScanRules(f *testing.F) {
	for _, tt := range parseTests {
		f.Add([]byte(tt.in))
	}
	data, err := (&Rules{Rules: genRules(8)}).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add(bytes.ReplaceAll(data, []byte("  - "), []byte("- ")))
	f.Add([]byte("rules:\n  - id: '" + id1 + "'\n    cidr: \"::/0\" # c\n    description: 'a '' b' # c\n    updated_at: ~\n"))
	f.Add([]byte("rules:\n  - id: " + id1 + "\n    cidr: ::ffff:1.2.3.0/120\n    description: -a ?b :c d:e f#g h #i\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkScanAgrees(t, data)
	})
}

// TestScanRulesRandom builds many small files from pieces near the edges
// of the fast path's shape and checks that the two paths agree on each:
// a grammar-aware complement to FuzzScanRules that runs on every go test.
func TestScanRulesRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	// mostly returns good, and now and then one of odd.
	mostly := func(good string, odd ...string) string {
		if rng.IntN(12) == 0 {
			return pick(odd...)
		}
		return good
	}
	value := func(key string) string {
		var v string
		odd := rng.IntN(8) == 0 // most values are good, to get past the checks
		switch key {
		case "id":
			v = testID(rng.IntN(1000))
			if rng.IntN(4) == 0 {
				v = strings.ToUpper(v)
			}
			if odd {
				v = pick(id1, "office", "", "~", "urn:uuid:"+id2)
			}
		case "cidr":
			v = pick(fmt.Sprintf("10.%d.0.0/16", rng.IntN(256)), fmt.Sprintf("2001:db8:%x::/48", rng.IntN(1<<16)),
				fmt.Sprintf("::ffff:10.%d.0.0/112", rng.IntN(256)))
			if odd {
				v = pick("::/0", "2001:db8::", "10.0.0.1", "10.0.0.1/8", "0.0.0.0/0", "null")
			}
		case "created_at", "updated_at":
			v = pick("2019-07-17T00:05:52Z", "2019-07-17T02:05:52.5+02:00")
			if odd {
				v = pick("2019-07-17", "", "NULL")
			}
		default:
			v = pick("office", "Büro", "-x", "- x", ":x", "?x", "a: b", "a:b", "a#b", "a #b", "x:",
				"true", "null", "Null", "NULL", "nul", "~", "0x1F", "[a]", "a, b", "&a x", "*a", "!x", "|", ">",
				"@x", "%x", "`x`", "#", "a\u00a0#b", "a\u2028b", "a\tb", "-", "?", ":", "'", "\"", "a'b", `a"b`)
		}
		switch rng.IntN(12) {
		case 0:
			v = "'" + strings.ReplaceAll(v, "'", pick("''", "'")) + "'"
		case 1:
			v = `"` + v + `"`
		}
		return v + mostly("", " ", "  # c", "#c", " #", "\t")
	}
	accepted := 0
	const files = 20_000
	for range files {
		var b strings.Builder
		b.WriteString(mostly("", "# c\n", "\n", "---\n", " ", "%YAML 1.1\n"))
		b.WriteString(mostly("rules:", "rules: []", "rules: # c", "rules:[]", "rule:", "rules: [] # c"))
		b.WriteString(mostly("\n", "\r\n", " \n", "\t\n"))
		seq := pick("", "  ", "  ", "    ")
		for range rng.IntN(4) {
			dash := mostly("- ", "-  ", "-", "-\t", "- - ")
			keyIndent := len(seq) + len(dash)
			keys := []string{"id", "cidr", "description", "created_at", "updated_at"}
			rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
			keys = keys[:2+rng.IntN(4)]
			if rng.IntN(12) == 0 {
				keys = append(keys, pick("id", "color", "id ", "cidr", "description"))
			}
			for k, key := range keys {
				if k == 0 {
					b.WriteString(seq + dash)
				} else {
					ind := keyIndent
					if rng.IntN(20) == 0 {
						ind += 1 - 2*rng.IntN(2)
					}
					b.WriteString(strings.Repeat(" ", max(ind, 0)))
				}
				b.WriteString(key + mostly(": ", ":  ", ":", ":\t") + value(key) + "\n")
				b.WriteString(mostly("", "# c\n", "\n", "  # c\n", "  more\n", "        more\n", "...\n", "\t\n"))
			}
		}
		b.WriteString(mostly("", "# end\n", "extra: 1\n", "---\n", "...\n"))
		if checkScanAgrees(t, []byte(b.String())) {
			accepted++
		}
		if t.Failed() {
			return
		}
	}
	// The pieces are chosen so that a good share of the files fall
	// inside the shape; otherwise this test would check little.
	if accepted < files/10 {
		t.Errorf("scanRules took only %d of %d files", accepted, files)
	}
	t.Logf("scanRules took %d of %d files", accepted, files)
}
