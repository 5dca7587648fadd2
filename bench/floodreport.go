package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// rowKindFlood marks the rows of the flood scenario.
const rowKindFlood = "flood"

// Issue 12's targets for the real client under a flood.
const (
	floodGoalOK  = 0.99 // share of psql attempts that get in
	floodGoalP99 = 3    // connect p99 over the no-flood p99
)

// summarizeFlood takes the median of each flood figure over the good
// samples, and every distinct psql error (bounded); nil when no sample
// has flood figures.
func summarizeFlood(samples []Sample) *FloodFigures {
	var fs []*FloodFigures
	for _, s := range samples {
		if s.Err == "" && s.Flood != nil {
			fs = append(fs, s.Flood)
		}
	}
	if len(fs) == 0 {
		return nil
	}
	med := func(get func(*FloodFigures) float64) float64 {
		xs := make([]float64, len(fs))
		for i, f := range fs {
			xs[i] = get(f)
		}
		return median(xs)
	}
	out := &FloodFigures{
		Attempts:        int(med(func(f *FloodFigures) float64 { return float64(f.Attempts) })),
		OK:              int(med(func(f *FloodFigures) float64 { return float64(f.OK) })),
		PgbenchConns:    int64(med(func(f *FloodFigures) float64 { return float64(f.PgbenchConns) })),
		PgbenchConnPerS: med(func(f *FloodFigures) float64 { return f.PgbenchConnPerS }),
		PgbenchConnMs:   med(func(f *FloodFigures) float64 { return f.PgbenchConnMs }),
		PgbenchAborted:  int(med(func(f *FloodFigures) float64 { return float64(f.PgbenchAborted) })),
		CPUPercent:      med(func(f *FloodFigures) float64 { return f.CPUPercent }),
		RSS:             int64(med(func(f *FloodFigures) float64 { return float64(f.RSS) })),
		Held:            med(func(f *FloodFigures) float64 { return f.Held }),
		OpensPerS:       med(func(f *FloodFigures) float64 { return f.OpensPerS }),
		HandshakesPerS:  med(func(f *FloodFigures) float64 { return f.HandshakesPerS }),
		DialErrsPerS:    med(func(f *FloodFigures) float64 { return f.DialErrsPerS }),
		Load:            med(func(f *FloodFigures) float64 { return f.Load }),
		LogBytes:        int64(med(func(f *FloodFigures) float64 { return float64(f.LogBytes) })),
	}
	if len(fs) == 1 {
		out.LatMs = fs[0].LatMs
	}
	for _, f := range fs {
		if out.PgbenchErr == "" {
			out.PgbenchErr = f.PgbenchErr
		}
		for _, e := range f.Errors {
			if len(out.Errors) < maxErrors && !slices.Contains(out.Errors, e) {
				out.Errors = append(out.Errors, e)
			}
		}
	}
	return out
}

// compareFlood divides each flood row's connect latency by the same
// target's in the no-flood row.
func compareFlood(rows []Row) {
	var base *Row
	for i := range rows {
		if rows[i].Kind == rowKindFlood && rows[i].Name == "flood-none" {
			base = &rows[i]
		}
	}
	if base == nil {
		return
	}
	for i := range rows {
		row := &rows[i]
		if row.Kind != rowKindFlood || row == base {
			continue
		}
		for j := range row.Targets {
			t := &row.Targets[j]
			b := findTarget(base, t.Target)
			if b == nil || t.Median.Err != "" {
				continue
			}
			if b.Median.P50ms > 0 && t.Median.P50ms > 0 {
				t.P50VsNoFlood = t.Median.P50ms / b.Median.P50ms
			}
			if b.Median.P99ms > 0 && t.Median.P99ms > 0 {
				t.P99VsNoFlood = t.Median.P99ms / b.Median.P99ms
			}
		}
	}
}

// floodHeadlines are issue 12's figures for spacegate under each flood:
// the share of psql attempts that got in and the connect p99 against no
// flood, each with its target, then ratios to the peers and the proxy's
// CPU and memory against no flood.
func floodHeadlines(byName map[string]*Row) []Headline {
	base := byName["flood-none"]
	var sgBase *TargetResult
	if base != nil {
		sgBase = findTarget(base, targetSpacegate)
	}
	var hs []Headline
	for _, p := range []struct{ row, what string }{
		{"flood-stranger", "idle flood from a disallowed address"},
		{"flood-nat", "idle flood from the client's own address"},
		{"flood-hello", "ClientHello flood from a disallowed address"},
	} {
		row := byName[p.row]
		if row == nil {
			continue
		}
		sg := findTarget(row, targetSpacegate)
		if sg == nil || sg.Median.Flood == nil {
			continue
		}
		f := sg.Median.Flood
		ok := float64(f.OK) / float64(max(1, f.Attempts))
		hs = append(hs, Headline{Issue: 12, What: p.what + ": psql attempts that got in", Row: p.row, Ratio: ok,
			Detail: fmt.Sprintf("spacegate %d of %d", f.OK, f.Attempts) + peerOK(row),
			Better: ok >= floodGoalOK, Goal: floodGoalOK, Met: ok >= floodGoalOK})
		p99 := Headline{Issue: 12, What: p.what + ": psql connect p99 vs no flood (lower is better)", Row: p.row,
			Ratio: sg.P99VsNoFlood, Goal: floodGoalP99, Lower: true}
		switch {
		case f.OK == 0:
			p99.Detail = "spacegate: no attempt got in"
		case sgBase == nil:
			p99.Detail = fmt.Sprintf("spacegate %s ms; no baseline", ms(sg.Median.P99ms))
		default:
			p99.Detail = fmt.Sprintf("spacegate %s ms vs %s ms without a flood", ms(sg.Median.P99ms), ms(sgBase.Median.P99ms))
			p99.Met = p99.Ratio > 0 && p99.Ratio <= floodGoalP99
			p99.Better = p99.Met
		}
		hs = append(hs, p99)
		if row.BestPeer != "" && sg.VsBestPeer > 0 {
			hs = append(hs, Headline{Issue: 12, What: p.what + ": psql attempts that got in vs best peer", Row: p.row,
				Ratio: sg.VsBestPeer, Detail: fmt.Sprintf("spacegate %s%% vs %s %s%%", num(sg.Median.Value), row.BestPeer, num(findTarget(row, row.BestPeer).Median.Value)),
				Better: sg.VsBestPeer > 1})
		}
		if sgBase != nil && sgBase.Median.Flood != nil {
			b := sgBase.Median.Flood
			detail := fmt.Sprintf("spacegate %.0f%% of a core vs %.0f%% without a flood", f.CPUPercent, b.CPUPercent)
			if p.row == "flood-hello" {
				detail += fmt.Sprintf(", at %s handshakes/s", num(f.HandshakesPerS))
			} else {
				detail += fmt.Sprintf(", the flood reopening %s sockets/s", num(f.OpensPerS))
			}
			if b.CPUPercent > 0 {
				hs = append(hs, Headline{Issue: 12, What: p.what + ": proxy CPU vs no flood (lower is better)", Row: p.row,
					Ratio: f.CPUPercent / b.CPUPercent, Detail: detail, Lower: true})
			}
			if b.LogBytes > 0 {
				hs = append(hs, Headline{Issue: 12, What: p.what + ": proxy log written vs no flood (lower is better)", Row: p.row,
					Ratio:  float64(f.LogBytes) / float64(b.LogBytes),
					Detail: fmt.Sprintf("spacegate %s KiB vs %s KiB without a flood", num(float64(f.LogBytes)/1024), num(float64(b.LogBytes)/1024)), Lower: true})
			}
			if sgBase.Median.PeakRSS > 0 {
				hs = append(hs, Headline{Issue: 12, What: p.what + ": proxy peak RSS vs no flood (lower is better)", Row: p.row,
					Ratio:  float64(sg.Median.PeakRSS) / float64(sgBase.Median.PeakRSS),
					Detail: fmt.Sprintf("spacegate %s MiB vs %s MiB without a flood", mib(sg.Median.PeakRSS), mib(sgBase.Median.PeakRSS)), Lower: true})
			}
		}
	}
	return hs
}

// peerOK lists how many psql attempts got in through each other proxy.
func peerOK(row *Row) string {
	var parts []string
	for _, t := range row.Targets {
		if t.Role == roleSubject || t.Median.Flood == nil || t.Median.Err != "" {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d", t.Target, t.Median.Flood.OK))
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, ", ")
}

// writeFloodRow writes one flood row's table, then the reasons psql gave
// for failed attempts.
func writeFloodRow(w io.Writer, row Row) {
	hello := row.Name == "flood-hello"
	fmt.Fprintf(w, "| target | psql ok | p50 ms | p99 ms | p99 vs no flood | pgbench -C conn/s | pgbench aborted clients | pgbench avg connect ms | proxy CPU %% of a core | proxy peak RSS MiB | proxy log KiB | flood sockets open | flood opens/s (failed dials/s) |")
	if hello {
		fmt.Fprintf(w, " handshakes/s |")
	}
	fmt.Fprintf(w, " ok vs best peer | load |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	if hello {
		fmt.Fprintf(w, "---:|")
	}
	fmt.Fprintf(w, "---:|---:|\n")
	var notes []string
	for _, t := range row.Targets {
		name := t.Target
		if t.Role == roleSubject {
			name = "**" + name + "**"
		}
		f := t.Median.Flood
		if t.Median.Err != "" || f == nil {
			fmt.Fprintf(w, "| %s | failed: %s |\n", name, firstError(t))
			continue
		}
		fmt.Fprintf(w, "| %s | %d/%d (%s%%) | %s | %s | %s | %s | %d | %s | %s | %s | %s | %s | %s |",
			name, f.OK, f.Attempts, num(t.Median.Value), ms(t.Median.P50ms), ms(t.Median.P99ms), ratio(t.P99VsNoFlood),
			num(f.PgbenchConnPerS), f.PgbenchAborted, optNum(f.PgbenchConnMs), num(f.CPUPercent), mib(t.Median.PeakRSS), num(float64(f.LogBytes)/1024),
			optNum(f.Held), opens(f))
		if hello {
			fmt.Fprintf(w, " %s |", num(f.HandshakesPerS))
		}
		fmt.Fprintf(w, " %s | %s |\n", ratio(t.VsBestPeer), optNum(f.Load))
		var why []string
		for _, e := range f.Errors {
			why = append(why, "`"+mdCell(e)+"`")
		}
		if f.PgbenchErr != "" {
			why = append(why, "pgbench: `"+mdCell(f.PgbenchErr)+"`")
		}
		if len(why) > 0 {
			notes = append(notes, fmt.Sprintf("- %s: %s", t.Target, strings.Join(why, "; ")))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\nWhy attempts failed:\n\n%s\n", strings.Join(notes, "\n"))
	}
}

// opens gives the flood's opens per second, and its failed dials when
// there were any.
func opens(f *FloodFigures) string {
	if f.DialErrsPerS > 0 {
		return fmt.Sprintf("%s (%s)", num(f.OpensPerS), num(f.DialErrsPerS))
	}
	return optNum(f.OpensPerS)
}

// mdCell makes text safe inside a markdown code span in a list.
func mdCell(s string) string {
	s = strings.ReplaceAll(s, "`", "'")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
