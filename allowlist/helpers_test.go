package allowlist

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func pp(ss ...string) (ret []netip.Prefix) {
	for _, s := range ss {
		ret = append(ret, netip.MustParsePrefix(s))
	}
	return
}

func aa(ss ...string) (ret []netip.Addr) {
	for _, s := range ss {
		ret = append(ret, netip.MustParseAddr(s))
	}
	return
}

// testID returns a fixed, valid rule id for index i.
func testID(i int) string {
	return fmt.Sprintf("00000000-0000-4000-8000-%012x", i)
}

// rulesOf returns one rule per prefix, with ids testID(0), testID(1), ...
func rulesOf(ps []netip.Prefix) []Rule {
	rules := make([]Rule, len(ps))
	for i, p := range ps {
		rules[i] = Rule{ID: testID(i), CIDR: p}
	}
	return rules
}

// problems returns the messages of the *ParseError values joined in err.
func problems(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	u, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %q (%T) does not unwrap to a list of errors", err, err)
	}
	var msgs []string
	for _, e := range u.Unwrap() {
		var pe *ParseError
		if !errors.As(e, &pe) {
			t.Fatalf("problem %q is a %T, want *ParseError", e, e)
		}
		msgs = append(msgs, pe.Error())
	}
	return msgs
}
