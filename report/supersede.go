package report

import "fmt"

// Supersede keeps, for each grid point (the "point" field) measured on one device with one set of versions,
// only its latest row: a sweep re-runs a failed or interrupted point by appending a new row, and the newest
// row is the point's result (the same rule the sweep's own reader follows). Latest means the later "time"
// field when both rows have one, else the later row in load order. Rows without a point are all kept.
// It returns the kept rows (in their original order) and a note when any were dropped.
func Supersede(rows []Row) ([]Row, string) {
	groupKeys := GroupFields(rows)
	latest := map[string]int{}
	for i, r := range rows {
		p, ok := r.Str("point")
		if !ok || p == "" {
			continue
		}
		k := p + "\x01" + joinKey(values(r, groupKeys))
		j, seen := latest[k]
		if !seen || !newer(rows[j], r) {
			latest[k] = i
		}
	}
	var out []Row
	dropped := 0
	for i, r := range rows {
		p, ok := r.Str("point")
		if ok && p != "" && latest[p+"\x01"+joinKey(values(r, groupKeys))] != i {
			dropped++
			continue
		}
		out = append(out, r)
	}
	if dropped == 0 {
		return out, ""
	}
	return out, fmt.Sprintf("%d superseded rows dropped: a point measured again keeps only its latest row (--all-rows keeps every row)", dropped)
}

// newer reports whether a is strictly newer than b by their "time" fields (RFC 3339 strings compare in order).
func newer(a, b Row) bool {
	ta, ok1 := a["time"].(string)
	tb, ok2 := b["time"].(string)
	return ok1 && ok2 && ta > tb
}
