package report

import (
	"encoding/csv"
	"encoding/json"
	"io"
	"strconv"
)

// RenderJSON writes the report as one indented JSON object (tables, cells with value, spread, status, ratio).
func RenderJSON(w io.Writer, rep *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// RenderCSV writes one line per cell (tidy data): group fields, row fields, column fields, then the metric,
// value, lo, hi, spread kind, n, total, status and ratio. Empty cells are written too, with status "empty".
func RenderCSV(w io.Writer, rep *Report) error {
	cw := csv.NewWriter(w)
	header := append([]string{}, rep.GroupKeys...)
	header = append(header, rep.RowKeys...)
	header = append(header, rep.ColKeys...)
	header = append(header, "metric", "value", "lo", "hi", "spread", "n", "total", "status", "ratio", "baseline")
	if err := cw.Write(header); err != nil {
		return err
	}
	base := ""
	if rep.Baseline != nil {
		base = rep.Baseline.Key + "=" + rep.Baseline.Value
	}
	num := func(p *float64) string {
		if p == nil {
			return ""
		}
		return strconv.FormatFloat(*p, 'g', 6, 64)
	}
	for _, t := range rep.Tables {
		for _, l := range t.Lines {
			for j, c := range l.Cells {
				var rec []string
				for _, kv := range t.Group {
					rec = append(rec, kv.Value)
				}
				rec = append(rec, l.Key...)
				rec = append(rec, t.Columns[j]...)
				rec = append(rec, rep.Metric, num(c.Value), num(c.Lo), num(c.Hi), c.Spread,
					strconv.Itoa(c.N), strconv.Itoa(c.Total), c.Status, num(c.Ratio), base)
				if err := cw.Write(rec); err != nil {
					return err
				}
			}
		}
	}
	cw.Flush()
	return cw.Error()
}
