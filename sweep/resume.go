package sweep

import (
	"github.com/mdnctl/mdnctl/results"
)

// Pending drops the points the index says are done (see results.Index.Done) and returns the rest in plan order.
func Pending(points []Point, ix *results.Index, retryFailed bool) (todo []Point, skipped int) {
	for _, p := range points {
		if ix != nil && ix.Done(p.ID, retryFailed) {
			skipped++
			continue
		}
		todo = append(todo, p)
	}
	return todo, skipped
}

// Select returns the points whose variant hash or point id starts with h (at least 4 hex digits).
func Select(points []Point, h string) []Point {
	var out []Point
	for _, p := range points {
		if MatchHash(p.Variant, h) || MatchHash(p.ID, h) {
			out = append(out, p)
		}
	}
	return out
}

// PointsFromRows rebuilds points from result rows (their recorded fields), so that a row of any earlier run can
// be re-run exactly even when the sweep file has changed. Rows are matched on variant or point hash; the
// latest row of each point is used.
func PointsFromRows(rows []results.Row, h string) []Point {
	var out []Point
	for _, r := range results.Merge(rows) {
		id, variant := results.Str(r, "point"), results.Str(r, "variant")
		if id == "" || !(MatchHash(variant, h) || MatchHash(id, h)) {
			continue
		}
		vals := map[string]any{}
		ok := true
		for _, f := range Fields {
			v, present := r[f.Name]
			if !present {
				ok = false
				break
			}
			c, err := f.Coerce(v)
			if err != nil {
				ok = false
				break
			}
			vals[f.Name] = c
		}
		if !ok {
			continue
		}
		rep, _ := asInt(r[RepeatField])
		vals[RepeatField] = rep
		var extras []string
		if params, ok := r["params"].(map[string]any); ok {
			if d, ok := params["derived"].(map[string]any); ok {
				for _, k := range sortedKeysAny(d) {
					vals[k] = d[k]
					extras = append(extras, k)
				}
			}
		}
		out = append(out, Point{Index: len(out), ID: id, Variant: VariantHash(vals), Values: vals, Extras: extras})
	}
	return out
}
