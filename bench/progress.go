package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress prints one line per step with the elapsed time and an
// estimate of what is left; on a terminal the line is rewritten in place.
type progress struct {
	w       io.Writer
	tty     bool
	start   time.Time
	total   int
	done    int
	lineLen int
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

// step announces the next step of total.
func (p *progress) step(format string, args ...any) {
	p.done++
	elapsed := time.Since(p.start)
	eta := "?"
	if p.done > 1 && p.total > 0 {
		per := elapsed / time.Duration(p.done-1)
		eta = (per * time.Duration(p.total-p.done+1)).Round(time.Second).String()
	}
	line := fmt.Sprintf("[%d/%d %s, ~%s left] %s", p.done, p.total, elapsed.Round(time.Second), eta, fmt.Sprintf(format, args...))
	if p.tty {
		pad := max(0, p.lineLen-len(line))
		fmt.Fprintf(p.w, "\r%s%s", line, strings.Repeat(" ", pad))
		p.lineLen = len(line)
		return
	}
	fmt.Fprintln(p.w, line)
}

// logf prints a message on its own line.
func (p *progress) logf(format string, args ...any) {
	if p.tty && p.lineLen > 0 {
		fmt.Fprintln(p.w)
		p.lineLen = 0
	}
	fmt.Fprintf(p.w, "bench: "+format+"\n", args...)
}

// end finishes the progress line.
func (p *progress) end() {
	if p.tty && p.lineLen > 0 {
		fmt.Fprintln(p.w)
		p.lineLen = 0
	}
}
