package allowlist

import "testing"

func TestParseErrorString(t *testing.T) {
	tests := []struct {
		err  ParseError
		want string
	}{
		{ParseError{File: "rules/db.yaml", Line: 3, Msg: "missing id"}, "rules/db.yaml:3: missing id"},
		{ParseError{File: "rules/db.yaml", Msg: "missing id"}, "rules/db.yaml: missing id"},
		{ParseError{Line: 3, Msg: "missing id"}, "line 3: missing id"},
		{ParseError{Msg: "missing id"}, "missing id"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("%#v.Error() = %q, want %q", tt.err, got, tt.want)
		}
	}
}
