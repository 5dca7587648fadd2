package main

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// sample is one measurement of the gate.
type sample struct {
	at         time.Duration // since the soak started
	rss        int64
	goroutines float64
}

// report collects what the soak saw. Its methods are safe for concurrent use.
type report struct {
	opts  options
	start time.Time

	mu          sync.Mutex
	samples     []sample
	sampleErrs  []string
	reloads     int
	reloadErrs  []string
	revocations int
	cutTimes    []time.Duration
	revokeErrs  []string

	elapsed    time.Duration
	pgbench    string
	pgbenchErr error
	failed     int64 // -1: not found in pgbench's output
	processed  int64
	tps        float64
}

func (r *report) sample(g *gate, w io.Writer) {
	at := time.Since(r.start)
	rss, err := g.rss()
	var gor float64
	if err == nil {
		gor, err = g.metric("go_goroutines")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.sampleErrs = append(r.sampleErrs, fmt.Sprintf("%s: %v", at.Round(time.Second), err))
		return
	}
	r.samples = append(r.samples, sample{at, rss, gor})
	fmt.Fprintf(w, "%8s  rss %6.1f MiB  goroutines %4.0f  reloads %d  revocations %d\n",
		at.Round(time.Second), mib(rss), gor, r.reloads, r.revocations)
}

func (r *report) reloaded(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.reloadErrs = append(r.reloadErrs, err.Error())
		return
	}
	r.reloads++
}

func (r *report) revoked(took time.Duration, err error, w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.revokeErrs = append(r.revokeErrs, err.Error())
		fmt.Fprintf(w, "revocation failed: %v\n", err)
		return
	}
	r.revocations++
	r.cutTimes = append(r.cutTimes, took)
}

func (r *report) parsePgbench() {
	r.failed = -1
	if m := reFailed.FindStringSubmatch(r.pgbench); m != nil {
		r.failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reProcessed.FindStringSubmatch(r.pgbench); m != nil {
		r.processed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reTPS.FindStringSubmatch(r.pgbench); m != nil {
		r.tps, _ = strconv.ParseFloat(m[1], 64)
	}
}

// baseline returns the first sample after warm-up and the last sample.
func (r *report) baseline() (first, last sample, ok bool) {
	for _, s := range r.samples {
		if s.at >= r.opts.warmup {
			return s, r.samples[len(r.samples)-1], true
		}
	}
	return sample{}, sample{}, false
}

// problems lists every reason the soak fails.
func (r *report) problems() []string {
	var p []string
	if r.pgbenchErr != nil {
		p = append(p, fmt.Sprintf("pgbench: %v", r.pgbenchErr))
	}
	switch {
	case r.failed < 0:
		p = append(p, "pgbench printed no failed transaction count")
	case r.failed > 0:
		p = append(p, fmt.Sprintf("pgbench: %d failed transactions", r.failed))
	}
	if r.processed == 0 {
		p = append(p, "pgbench processed no transactions")
	}
	for _, e := range r.reloadErrs {
		p = append(p, "reload: "+e)
	}
	for _, e := range r.revokeErrs {
		p = append(p, "revocation: "+e)
	}
	for _, e := range r.sampleErrs {
		p = append(p, "sample at "+e)
	}
	if want := int(r.elapsed/r.opts.reloadEvery) - 1; r.reloads < want {
		p = append(p, fmt.Sprintf("%d reloads in %s, want at least %d", r.reloads, r.elapsed.Round(time.Second), want))
	}
	if r.elapsed >= r.opts.revokeEvery+r.opts.sampleEvery && r.revocations == 0 {
		p = append(p, "no revocation completed")
	}
	first, last, ok := r.baseline()
	if !ok || last.at == first.at {
		p = append(p, fmt.Sprintf("fewer than two samples after the %s warm-up", r.opts.warmup))
		return p
	}
	if g := growth(float64(first.rss), float64(last.rss)); g > r.opts.maxGrowth {
		p = append(p, fmt.Sprintf("RSS grew %.0f%% after warm-up: %.1f MiB at %s, %.1f MiB at %s",
			100*g, mib(first.rss), first.at.Round(time.Second), mib(last.rss), last.at.Round(time.Second)))
	}
	if g := growth(first.goroutines, last.goroutines); g > r.opts.maxGrowth {
		p = append(p, fmt.Sprintf("goroutines grew %.0f%% after warm-up: %.0f at %s, %.0f at %s",
			100*g, first.goroutines, first.at.Round(time.Second), last.goroutines, last.at.Round(time.Second)))
	}
	return p
}

func (r *report) ok() bool { return len(r.problems()) == 0 }

// print writes the summary.
func (r *report) print(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(w, "\n== soak summary: %s of pgbench -c %d through the gate (warm-up %s) ==\n",
		r.elapsed.Round(time.Second), r.opts.clients, r.opts.warmup)
	if len(r.samples) > 0 {
		rss := make([]float64, len(r.samples))
		gor := make([]float64, len(r.samples))
		for i, s := range r.samples {
			rss[i], gor[i] = mib(s.rss), s.goroutines
		}
		fmt.Fprintf(w, "samples:      %d, every %s\n", len(r.samples), r.opts.sampleEvery)
		fmt.Fprintf(w, "RSS MiB:      %s\n", series(rss, "%.1f"))
		fmt.Fprintf(w, "goroutines:   %s\n", series(gor, "%.0f"))
		if first, last, ok := r.baseline(); ok {
			fmt.Fprintf(w, "after warm-up (from %s): RSS %+.1f%%, goroutines %+.1f%% (limit %+.0f%%)\n",
				first.at.Round(time.Second), 100*growth(float64(first.rss), float64(last.rss)),
				100*growth(first.goroutines, last.goroutines), 100*r.opts.maxGrowth)
		}
	}
	fmt.Fprintf(w, "reloads:      %d (rules file rewritten every %s), %d failed\n", r.reloads, r.opts.reloadEvery, len(r.reloadErrs))
	if len(r.cutTimes) > 0 {
		var worst time.Duration
		for _, d := range r.cutTimes {
			worst = max(worst, d)
		}
		fmt.Fprintf(w, "revocations:  %d sessions cut after their certificate was revoked (slowest %s), %d failed\n",
			r.revocations, worst.Round(time.Millisecond), len(r.revokeErrs))
	} else {
		fmt.Fprintf(w, "revocations:  0, %d failed\n", len(r.revokeErrs))
	}
	fmt.Fprintf(w, "pgbench:      %d transactions, %.1f tps, failed transactions: %d\n", r.processed, r.tps, r.failed)
	if p := r.problems(); len(p) > 0 {
		fmt.Fprintf(w, "FAIL\n")
		for _, s := range p {
			fmt.Fprintf(w, "  - %s\n", s)
		}
		if r.pgbenchErr != nil || r.failed != 0 {
			fmt.Fprintf(w, "pgbench output:\n%s\n", indent(r.pgbench))
		}
		return
	}
	fmt.Fprintf(w, "PASS\n")
}

// series formats min, max, first and last of xs.
func series(xs []float64, format string) string {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, x := range xs {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	f := func(x float64) string { return fmt.Sprintf(format, x) }
	return fmt.Sprintf("min %s  max %s  first %s  last %s", f(lo), f(hi), f(xs[0]), f(xs[len(xs)-1]))
}

func growth(from, to float64) float64 {
	if from == 0 {
		return 0
	}
	return to/from - 1
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ")
}
