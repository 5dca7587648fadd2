package main

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// findTarget returns the named target's result in row, or nil.
func findTarget(row *Row, name string) *TargetResult {
	for i := range row.Targets {
		if row.Targets[i].Target == name && row.Targets[i].Median.Err == "" {
			return &row.Targets[i]
		}
	}
	return nil
}

// headlines computes the ratios issue 6 asks for from whichever rows were
// measured.
func headlines(rows []Row) []Headline {
	byName := make(map[string]*Row)
	for i := range rows {
		byName[rows[i].Name] = &rows[i]
	}
	var hs []Headline
	// vs adds spacegate's figure divided by other's; other "" is the best
	// peer, other "=" a fixed figure, goal. cpu compares CPU per unit
	// instead of the row's value. goal is issue 6's target for the ratio
	// (0: none).
	vs := func(what, rowName, other string, cpu bool, goal float64) {
		row := byName[rowName]
		if row == nil {
			return
		}
		if other == "" {
			other = row.BestPeer
		}
		sg := findTarget(row, targetSpacegate)
		if sg == nil {
			return
		}
		a, unit, higher := sg.Median.Value, row.Unit, row.HigherIsBetter
		if cpu {
			a, unit, higher = sg.Median.CPUus, row.CPUUnit, false
		}
		var b float64
		detail := ""
		if other == "=" {
			b, goal = goal, 1
			detail = fmt.Sprintf("spacegate %s %s vs the target's %s", num(a), unit, num(b))
		} else {
			ot := findTarget(row, other)
			if ot == nil {
				return
			}
			b = ot.Median.Value
			if cpu {
				b = ot.Median.CPUus
			}
			detail = fmt.Sprintf("spacegate %s %s vs %s %s", num(a), unit, other, num(b))
		}
		if b == 0 {
			return
		}
		h := Headline{What: what, Row: rowName, Ratio: a / b, Detail: detail,
			Better: (higher && a > b) || (!higher && a < b), Goal: goal, Lower: !higher}
		h.Met = goal > 0 && ((higher && h.Ratio >= goal) || (!higher && h.Ratio <= goal))
		hs = append(hs, h)
	}
	const gbps = 1e9 / (1 << 20) // 1 GB/s in MiB/s
	vs("pgbench -S, 8 clients: TPS vs best of stunnel/PgBouncer", "pg-select-8", "", false, 1.15)
	vs("pgbench -S, 8 clients: proxy CPU per transaction vs HAProxy (lower is better)", "pg-select-8", targetHAProxy, true, 1)
	vs("pgbench -S, 8 clients: proxy CPU per transaction vs stunnel (lower is better)", "pg-select-8", targetStunnel, true, 0)
	vs("pgbench -S, 64 clients: TPS vs best peer", "pg-select-64", "", false, 0)
	vs("pgbench TPC-B, 8 clients: TPS vs best peer", "pg-tpcb-8", "", false, 0)
	vs("pgbench TPC-B, 64 clients: TPS vs best peer", "pg-tpcb-64", "", false, 0)
	vs("pgbench -C: connections/s vs stunnel", "pg-connect-8", targetStunnel, false, 1.2)
	vs("pgbench -C: proxy CPU per connection vs stunnel (lower is better)", "pg-connect-8", targetStunnel, true, 0)
	vs("redis GET -c 50: ops/s vs stunnel", "redis-get-c50", targetStunnel, false, 1.3)
	vs("redis SET -c 50: ops/s vs stunnel", "redis-set-c50", targetStunnel, false, 1.3)
	vs("redis GET -P 16: ops/s vs stunnel", "redis-get-p16", targetStunnel, false, 1.3)
	vs("redis SET -P 16: ops/s vs stunnel", "redis-set-p16", targetStunnel, false, 1.3)
	vs("redis GET -k 0: ops/s vs stunnel", "redis-get-k0", targetStunnel, false, 0)
	vs("bulk COPY out: MiB/s vs 1 GB/s", "pg-copy", "=", false, gbps)
	vs("bulk COPY out: MiB/s vs best peer", "pg-copy", "", false, 0)
	vs("bulk COPY out: MiB/s vs direct TLS", "pg-copy", targetDirect, false, 0)
	vs("idle, 1k connections: RSS per connection vs stunnel (lower is better)", "idle-1k", targetStunnel, false, 0)
	vs("idle, 10k connections: RSS per connection vs 40 KiB (lower is better)", "idle-10k", "=", false, 40)
	vs("idle, 10k connections: RSS per connection vs stunnel (lower is better)", "idle-10k", targetStunnel, false, 0)
	return append(hs, floodHeadlines(byName)...)
}

// writeMarkdown writes the results as markdown: the machine, the headline
// ratios, then one table per row.
func writeMarkdown(w io.Writer, r *Results) {
	m := r.Machine
	fmt.Fprintf(w, "# spacegate load test, %s\n\n", r.Started)
	fmt.Fprintf(w, "Machine: %d CPUs (%s), %s, kernel %s, %s RAM. Go %s. spacegate %s.\n\n",
		m.NumCPU, m.CPUModel, m.OS, m.Kernel, m.Memory, m.GoVersion, m.SpacegateCommit)
	fmt.Fprintf(w, "Packages: %s.\n\n", strings.Join(m.Packages, ", "))
	s := r.Settings
	fmt.Fprintf(w, "Settings: %d round(s), targets interleaved (order rotated each round), about %.0f s per run, pgbench scale %d, RLIMIT_NOFILE %d. Took %s. Figures are medians over rounds; min–max is the spread of the main figure.\n\n",
		s.Rounds, s.RunSeconds, s.PgbenchScale, s.FDLimit, fmtDuration(r.Seconds))
	if s.FloodSockets > 0 {
		fmt.Fprintf(w, "The flood scenario runs one round whatever -rounds says: for each proxy, four phases (no flood, then %d idle sockets from 127.0.0.2, the same from 127.0.0.1, and a ClientHello flood from 127.0.0.2), each on a freshly restarted proxy with %d psql attempts and a pgbench -C trickle from 127.0.0.1.\n\n",
			s.FloodSockets, s.FloodTries)
	}
	for _, issue := range []int{6, 12} {
		var hs []Headline
		for _, h := range r.Headlines {
			if h.Issue == issue || (issue == 6 && h.Issue == 0) {
				hs = append(hs, h)
			}
		}
		if len(hs) == 0 {
			continue
		}
		fmt.Fprintf(w, "## Issue %d targets\n\n| figure | ratio (spacegate / other) | issue %d target | detail |\n|---|---:|---|---|\n", issue, issue)
		for _, h := range hs {
			goal := "-"
			if h.Goal > 0 {
				cmp, mark := ">=", "not met"
				if h.Lower {
					cmp = "<="
				}
				if h.Met {
					mark = "met"
				}
				goal = fmt.Sprintf("%s %.2f: %s", cmp, h.Goal, mark)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", h.What, ratio(h.Ratio), goal, h.Detail)
		}
		fmt.Fprintln(w)
	}
	for _, row := range r.Rows {
		fmt.Fprintf(w, "## %s: %s\n\n", row.Name, row.Title)
		if row.Command != "" {
			fmt.Fprintf(w, "`%s`", row.Command)
			if row.Note != "" {
				fmt.Fprintf(w, "; %s", row.Note)
			}
			fmt.Fprintf(w, "\n\n")
		}
		if row.Kind == rowKindFlood {
			writeFloodRow(w, row)
			fmt.Fprintln(w)
			continue
		}
		lat := false
		for _, t := range row.Targets {
			if t.Median.P50ms > 0 {
				lat = true
			}
		}
		fmt.Fprintf(w, "| target | %s | min–max |", row.Unit)
		if lat {
			fmt.Fprintf(w, " p50 ms | p99 ms |")
		}
		fmt.Fprintf(w, " proxy CPU %s | proxy peak RSS MiB | vs best peer | CPU vs HAProxy |\n|---|---:|---:|", row.CPUUnit)
		if lat {
			fmt.Fprintf(w, "---:|---:|")
		}
		fmt.Fprintf(w, "---:|---:|---:|---:|\n")
		for _, t := range row.Targets {
			name := t.Target
			if t.Role == roleSubject {
				name = "**" + name + "**"
			}
			if t.Median.Err != "" {
				fmt.Fprintf(w, "| %s | failed: %s |\n", name, firstError(t))
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s–%s |", name, num(t.Median.Value), num(t.Min), num(t.Max))
			if lat {
				fmt.Fprintf(w, " %s | %s |", ms(t.Median.P50ms), ms(t.Median.P99ms))
			}
			fmt.Fprintf(w, " %s | %s | %s | %s |\n", optNum(t.Median.CPUus), mib(t.Median.PeakRSS), ratio(t.VsBestPeer), ratio(t.CPUVsFloor))
		}
		fmt.Fprintln(w)
	}
}

// firstError returns the first failed sample's error, on one line.
func firstError(t TargetResult) string {
	for _, s := range t.Samples {
		if s.Err != "" {
			e := strings.ReplaceAll(s.Err, "\n", " ")
			e = strings.ReplaceAll(e, "|", "/")
			if len(e) > 200 {
				e = e[:200] + "…"
			}
			return e
		}
	}
	return "no samples"
}

// num formats a figure with about three significant digits.
func num(x float64) string {
	switch a := math.Abs(x); {
	case math.IsNaN(x):
		return "-"
	case a >= 1e6:
		return fmt.Sprintf("%.2fM", x/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.1fk", x/1e3)
	case a >= 100:
		return fmt.Sprintf("%.0f", x)
	case a >= 10:
		return fmt.Sprintf("%.1f", x)
	default:
		return fmt.Sprintf("%.2f", x)
	}
}

func optNum(x float64) string {
	if x == 0 {
		return "-"
	}
	return num(x)
}

func ms(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", x)
}

func mib(b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(b)/(1<<20))
}

func ratio(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", x)
}

func fmtDuration(secs float64) string {
	m := int(secs) / 60
	return fmt.Sprintf("%dm%02ds", m, int(secs)%60)
}
