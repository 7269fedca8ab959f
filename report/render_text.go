package report

import (
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/olekukonko/tablewriter"
	"github.com/olekukonko/tablewriter/renderer"
	"github.com/olekukonko/tablewriter/tw"
)

// Formats the table renderers know.
var Formats = []string{"table", "markdown", "csv", "json"}

// Render writes the report in one of Formats. color adds ANSI colours to the terminal table (green/red ratios).
func Render(w io.Writer, rep *Report, format string, color bool) error {
	switch format {
	case "", "table":
		return RenderTable(w, rep, color)
	case "markdown", "md":
		return RenderMarkdown(w, rep)
	case "csv":
		return RenderCSV(w, rep)
	case "json":
		return RenderJSON(w, rep)
	}
	return fmt.Errorf("unknown --format %q (expected one of %s)", format, strings.Join(Formats, ", "))
}

const (
	ansiGreen = "\x1b[32m"
	ansiRed   = "\x1b[31m"
	ansiDim   = "\x1b[2m"
	ansiBold  = "\x1b[1m"
	ansiReset = "\x1b[0m"
)

// RenderTable writes boxed terminal tables, one per group.
func RenderTable(w io.Writer, rep *Report, color bool) error {
	for i, t := range rep.Tables {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if g := groupTitle(t); g != "" {
			title := g + fmt.Sprintf(" — %d result rows", t.NRows)
			if color {
				title = ansiBold + title + ansiReset
			}
			fmt.Fprintln(w, title)
		}
		fmt.Fprintln(w, Caption(rep))
		tbl := tablewriter.NewTable(w,
			tablewriter.WithRenderer(renderer.NewBlueprint(tw.Rendition{Symbols: tw.NewSymbols(tw.StyleLight)})),
			tablewriter.WithHeaderAutoFormat(tw.Off),
			tablewriter.WithHeaderAlignment(tw.AlignCenter),
			tablewriter.WithRowAlignmentConfig(tw.CellAlignment{PerColumn: alignments(rep, t)}),
		)
		tbl.Header(headerRow(rep, t))
		for _, l := range t.Lines {
			if err := tbl.Append(textRow(rep, l, color, false)); err != nil {
				return fmt.Errorf("rendering table: %w", err)
			}
		}
		if err := tbl.Render(); err != nil {
			return fmt.Errorf("rendering table: %w", err)
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintln(w, "note: "+n)
	}
	return nil
}

// RenderMarkdown writes one Markdown section per group: heading, caption, table, notes.
func RenderMarkdown(w io.Writer, rep *Report) error {
	for i, t := range rep.Tables {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if g := groupTitle(t); g != "" {
			fmt.Fprintf(w, "#### %s (%d result rows)\n\n", g, t.NRows)
		}
		fmt.Fprintf(w, "*%s*\n\n", Caption(rep))
		tbl := tablewriter.NewTable(w,
			tablewriter.WithRenderer(renderer.NewMarkdown()),
			tablewriter.WithHeaderAutoFormat(tw.Off),
			tablewriter.WithRowAlignmentConfig(tw.CellAlignment{PerColumn: alignments(rep, t)}),
		)
		tbl.Header(headerRow(rep, t))
		for _, l := range t.Lines {
			if err := tbl.Append(textRow(rep, l, false, true)); err != nil {
				return fmt.Errorf("rendering markdown: %w", err)
			}
		}
		if err := tbl.Render(); err != nil {
			return fmt.Errorf("rendering markdown: %w", err)
		}
	}
	if len(rep.Notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range rep.Notes {
			fmt.Fprintln(w, "- "+n)
		}
	}
	return nil
}

func alignments(rep *Report, t *Table) []tw.Align {
	var a []tw.Align
	for range rep.RowKeys {
		a = append(a, tw.AlignLeft)
	}
	for range columnsOf(t) {
		a = append(a, tw.AlignRight)
	}
	return a
}

// Caption says what the numbers are: metric, unit, direction, aggregation, spread and the baseline.
func Caption(rep *Report) string {
	var b strings.Builder
	b.WriteString(rep.Metric)
	var unit []string
	if rep.Unit != "" {
		unit = append(unit, rep.Unit)
	}
	if rep.Better != "" {
		unit = append(unit, rep.Better+" is better")
	}
	if len(unit) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(unit, ", "))
	}
	over := "repeats"
	if len(rep.Merged) > 0 {
		over += " and " + strings.Join(rep.Merged, ", ")
	}
	fmt.Fprintf(&b, " · %s over %s; [p20–p80] of a single run, [min–max] across %s", rep.Agg, over, over)
	if rep.Baseline != nil {
		fmt.Fprintf(&b, " · ×: value ÷ %s=%s", rep.Baseline.Key, rep.Baseline.Value)
	}
	return b.String()
}

func groupTitle(t *Table) string {
	var parts []string
	for _, kv := range t.Group {
		v := kv.Value
		if v == "" {
			v = "?"
		}
		parts = append(parts, shortKey(kv.Key)+" "+v)
	}
	return strings.Join(parts, " · ")
}

func shortKey(k string) string {
	if i := strings.LastIndexByte(k, '.'); i >= 0 && k != "device.name" {
		return k[i+1:]
	}
	if k == "device.name" {
		return "device"
	}
	return k
}

func columnsOf(t *Table) [][]string {
	if len(t.Columns) == 0 {
		return [][]string{{}}
	}
	return t.Columns
}

func headerRow(rep *Report, t *Table) []string {
	h := append([]string{}, rep.RowKeys...)
	for _, c := range t.Columns {
		h = append(h, colTitle(rep, c))
	}
	return h
}

func colTitle(rep *Report, c []string) string {
	if len(rep.ColKeys) == 0 {
		return rep.Metric
	}
	var parts []string
	for i, k := range rep.ColKeys {
		v := c[i]
		if v == "" {
			v = "—"
		}
		parts = append(parts, k+"="+v)
	}
	s := strings.Join(parts, " ")
	if b := rep.Baseline; b != nil && b.Axis == "cols" && c[indexOf(rep.ColKeys, b.Key)] == b.Value {
		s += " (baseline)"
	}
	return s
}

func textRow(rep *Report, l *Line, color, markdown bool) []string {
	var out []string
	for i, k := range l.Key {
		if k == "" {
			k = "—"
		}
		if i == 0 && l.Baseline {
			k += " (baseline)"
		}
		out = append(out, k)
	}
	for _, c := range l.Cells {
		out = append(out, CellText(rep, c, color))
	}
	return out
}

// CellText is a cell as text: value [lo–hi] ratio×, or a mark for cells without a value.
func CellText(rep *Report, c *Cell, color bool) string {
	paint := func(code, s string) string {
		if !color || code == "" {
			return s
		}
		return code + s + ansiReset
	}
	if c.Value == nil {
		switch c.Status {
		case StatusEmpty:
			return paint(ansiDim, "·")
		case StatusMissing:
			return paint(ansiDim, "– no value")
		case "unavailable":
			return paint(ansiDim, "– unavailable")
		default:
			return paint(ansiRed, "✗ "+c.Status)
		}
	}
	s := FormatNumber(*c.Value)
	if c.Lo != nil && c.Hi != nil {
		s += " [" + FormatNumber(*c.Lo) + "–" + FormatNumber(*c.Hi) + "]"
	}
	if c.Status == StatusPartial {
		s += paint(ansiRed, fmt.Sprintf(" (%d/%d ok)", c.Statuses["ok"], c.Total))
	}
	if c.Ratio != nil {
		s += " " + paint(ratioColor(rep, *c.Ratio), FormatRatio(*c.Ratio))
	}
	return s
}

// FormatRatio prints a ratio as "0.83×" (three significant digits).
func FormatRatio(r float64) string {
	switch {
	case math.Abs(r) >= 100:
		return fmt.Sprintf("%.0f×", r)
	case math.Abs(r) >= 10:
		return fmt.Sprintf("%.1f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

// ratioVerdict is "good", "bad" or "" (no direction known, or within 0.5% of the baseline).
func ratioVerdict(rep *Report, r float64) string {
	if rep.Better == "" || math.Abs(r-1) < 0.005 {
		return ""
	}
	if (r < 1) == (rep.Better == "lower") {
		return "good"
	}
	return "bad"
}

func ratioColor(rep *Report, r float64) string {
	switch ratioVerdict(rep, r) {
	case "good":
		return ansiGreen
	case "bad":
		return ansiRed
	}
	return ""
}
