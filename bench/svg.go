package main

import (
	"fmt"
	"html"
	"io"
	"math"
)

// Chart geometry, in SVG user units.
const (
	svgWidth    = 1100
	svgLabelX   = 10  // target names
	svgValueX0  = 120 // start of the value bars
	svgValueW   = 380 // longest value bar
	svgCPUX0    = 720 // start of the CPU bars
	svgCPUW     = 260 // longest CPU bar
	svgBarH     = 14  // height of one bar
	svgBarGap   = 4   // between bars
	svgTitleH   = 22  // a row's title line
	svgRowGap   = 14  // between rows
	svgHeaderH  = 50  // the chart's title
	svgFontSize = 11
)

// targetColor gives each target one colour in every row.
func targetColor(name string) string {
	switch name {
	case targetSpacegate:
		return "#2e7d32"
	case targetStunnel:
		return "#ef6c00"
	case targetPgBouncer:
		return "#1565c0"
	case targetHAProxy:
		return "#9e9e9e"
	default:
		return "#cfcfcf"
	}
}

// writeSVG draws one panel per row: each target's median as a bar scaled
// to the row's largest, with its value and ratio to the best peer, and on
// the right the proxy's CPU per unit of work.
func writeSVG(w io.Writer, r *Results) error {
	height := svgHeaderH
	for _, row := range r.Rows {
		height += svgTitleH + len(row.Targets)*(svgBarH+svgBarGap) + svgRowGap
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="%d">`+"\n",
		svgWidth, height, svgWidth, height, svgFontSize)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="20" font-size="15" font-weight="bold">spacegate vs peers: medians of %d interleaved round(s)</text>`+"\n", svgLabelX, r.Settings.Rounds)
	p(`<text x="%d" y="38" fill="#555">%s; %d CPUs, kernel %s. Left: each row's figure (and its ratio to the best peer); right: proxy CPU per unit of work.</text>`+"\n",
		svgLabelX, esc(r.Started), r.Machine.NumCPU, esc(r.Machine.Kernel))
	y := svgHeaderH
	for _, row := range r.Rows {
		title := row.Name + ": " + row.Title + " (" + row.Unit
		if !row.HigherIsBetter {
			title += ", lower is better"
		}
		title += ")"
		p(`<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", svgLabelX, y+15, esc(title))
		if row.Kind == rowKindFlood {
			p(`<text x="%d" y="%d" fill="#555">proxy CPU, %% of a core</text>`+"\n", svgCPUX0, y+15)
		} else if row.CPUUnit != "" {
			p(`<text x="%d" y="%d" fill="#555">proxy CPU %s</text>`+"\n", svgCPUX0, y+15, esc(row.CPUUnit))
		}
		y += svgTitleH
		var maxV, maxCPU float64
		for _, t := range row.Targets {
			if t.Median.Err == "" {
				maxV = math.Max(maxV, t.Median.Value)
				maxCPU = math.Max(maxCPU, cpuFigure(t))
			}
		}
		for _, t := range row.Targets {
			weight := "normal"
			if t.Role == roleSubject {
				weight = "bold"
			}
			p(`<text x="%d" y="%d" font-weight="%s">%s</text>`+"\n", svgLabelX, y+svgBarH-3, weight, esc(t.Target))
			if t.Median.Err != "" {
				p(`<text x="%d" y="%d" fill="#b71c1c">failed</text>`+"\n", svgValueX0, y+svgBarH-3)
				y += svgBarH + svgBarGap
				continue
			}
			bw := 0.0
			if maxV > 0 {
				bw = t.Median.Value / maxV * svgValueW
			}
			p(`<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", svgValueX0, y, bw, svgBarH, targetColor(t.Target))
			label := num(t.Median.Value)
			if t.VsBestPeer > 0 {
				label += fmt.Sprintf("  (%.2f× best peer)", t.VsBestPeer)
			}
			p(`<text x="%.1f" y="%d">%s</text>`+"\n", float64(svgValueX0)+bw+5, y+svgBarH-3, esc(label))
			if cpu := cpuFigure(t); cpu > 0 && maxCPU > 0 {
				cw := cpu / maxCPU * svgCPUW
				p(`<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s" opacity="0.7"/>`+"\n", svgCPUX0, y, cw, svgBarH, targetColor(t.Target))
				p(`<text x="%.1f" y="%d">%s</text>`+"\n", float64(svgCPUX0)+cw+5, y+svgBarH-3, esc(num(cpu)))
			}
			y += svgBarH + svgBarGap
		}
		y += svgRowGap
	}
	p("</svg>\n")
	return nil
}

func esc(s string) string { return html.EscapeString(s) }

// cpuFigure is what the right-hand bar of a target shows: the proxy's CPU
// per unit of work, or in a flood row its CPU in percent of a core.
func cpuFigure(t TargetResult) float64 {
	if t.Median.Flood != nil {
		return t.Median.Flood.CPUPercent
	}
	return t.Median.CPUus
}
