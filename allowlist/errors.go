package allowlist

import (
	"strconv"
	"strings"
)

// ParseError is one problem at one place of a rules file.
//
// File is the path of the file, or empty when the rules did not come from a
// file ([Parse]). Line is the 1-based line of the problem, or 0 when the
// problem has no single place (such as a rule built in code).
type ParseError struct {
	File string
	Line int
	Msg  string
}

var _ error = (*ParseError)(nil)

// Error returns "file:line: msg". It leaves out "file:" when File is empty,
// writing "line N: msg" instead, and the line when Line is 0.
func (e *ParseError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		b.WriteString(e.File)
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(": ")
	case e.File != "":
		b.WriteString(e.File)
		b.WriteString(": ")
	case e.Line > 0:
		b.WriteString("line ")
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}
