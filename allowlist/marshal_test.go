package allowlist

import (
	"testing"
)

// TestMarshalDescriptionRoundTrip checks descriptions that yaml.v3 writes
// in a form it cannot read back unless Marshal quotes them. The first was
// found by FuzzParse.
func TestMarshalDescriptionRoundTrip(t *testing.T) {
	for _, desc := range []string{
		"\t\n",
		"\t",
		"office\tNAT",
		"line one\nline two",
		"line one\n\tindented",
		" leading space",
		"trailing space ",
		"\r\n",
		"nul\x00byte",
		"next line\u0085",
		"separator\u2028",
		"\ufeffbom",
		"café: # not a comment",
		"- looks like a list",
		"plain",
	} {
		r := &Rules{Rules: []Rule{{ID: "7f9c1d2e-3a4b-4c5d-8e6f-a1b2c3d4e5f6", CIDR: pp("10.0.0.0/8")[0], Description: desc}}}
		out, err := r.Marshal()
		if err != nil {
			t.Fatalf("Marshal(%q): %v", desc, err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Errorf("Parse(Marshal(%q)): %v\n%s", desc, err, out)
			continue
		}
		if got := again.Rules[0].Description; got != desc {
			t.Errorf("description %q came back as %q\n%s", desc, got, out)
		}
	}
}
