package allowlist

import (
	"errors"
	"testing"
)

// The seed corpus is in testdata/fuzz/FuzzParse and runs with go test. Run
// the target for longer with
//
//	go test -run '^$' -fuzz FuzzParse -fuzztime 2m ./allowlist/

// FuzzParse checks that Parse never panics, that every problem it reports
// is a *ParseError, and that what it accepts is valid and survives a trip
// through Marshal unchanged, as the CLI's edits rely on.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(data)
		if err != nil {
			if r != nil {
				t.Fatalf("rules returned with error %v", err)
			}
			checkParseErrors(t, err)
			return
		}
		if r == nil {
			t.Fatal("nil rules without error")
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("Parse accepted rules that Validate refuses: %v", err)
		}
		out, err := r.Marshal()
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal(r)): %v\n%s", err, out)
		}
		if len(again.Rules) != len(r.Rules) {
			t.Fatalf("%d rules after a round trip, want %d\n%s", len(again.Rules), len(r.Rules), out)
		}
		for i, a := range r.Rules {
			b := again.Rules[i]
			if a.ID != b.ID || a.CIDR != b.CIDR || a.Description != b.Description ||
				!a.CreatedAt.Equal(b.CreatedAt) || !a.UpdatedAt.Equal(b.UpdatedAt) {
				t.Fatalf("rule %d changed in a round trip:\n%+v\n%+v\n%s", i, a, b, out)
			}
		}
	})
}

// checkParseErrors fails t unless err is an errors.Join of *ParseError
// values with no empty message, in line order.
func checkParseErrors(t *testing.T, err error) {
	t.Helper()
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %v (%T) is not an errors.Join", err, err)
	}
	line := 0
	for _, e := range j.Unwrap() {
		var pe *ParseError
		if !errors.As(e, &pe) || pe.Msg == "" || pe.Line < 0 {
			t.Fatalf("problem %v (%T) is not a *ParseError with a message", e, e)
		}
		if pe.Line < line {
			t.Fatalf("problems out of line order: line %d after %d", pe.Line, line)
		}
		line = pe.Line
	}
}
