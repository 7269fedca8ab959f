package report

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// Options choose what a pivot table shows.
type Options struct {
	Rows     []string // fields whose values make the table's rows (default: op, model or task, else the run)
	Cols     []string // fields whose values make its columns (default: T when present)
	Metric   string   // the numeric field in the cells (default: the first of fwdbwd_ms, fwd_ms, ms, tokens_per_s, accuracy, loss)
	Baseline string   // "value" (of a row or column field) or "field=value": cells get value/baseline ratios
	Agg      string   // how repeats combine: median (default), mean, min, max, last
	Better   string   // "lower" or "higher"; default from the metric's name; colours the ratios
	Group    []string // device/version fields that split tables; nil: detected; ["none"]: no split
	Axes     []string // fields that describe a variant (default DefaultAxes)
	Merge    []string // axes allowed to vary inside one cell (aggregated over, e.g. lr with --agg max)
}

// Report is a set of pivot tables, one per device/version group, plus what the reader must know.
type Report struct {
	Metric    string       `json:"metric"`
	Unit      string       `json:"unit,omitempty"`
	Better    string       `json:"better,omitempty"`
	Agg       string       `json:"aggregate"`
	RowKeys   []string     `json:"row_keys"`
	ColKeys   []string     `json:"col_keys"`
	GroupKeys []string     `json:"group_keys"`
	Baseline  *BaselineRef `json:"baseline,omitempty"`
	Merged    []string     `json:"merged,omitempty"` // axes aggregated over inside cells (--merge)
	Tables    []*Table     `json:"tables"`
	Notes     []string     `json:"notes,omitempty"`
}

// BaselineRef names the row or column every ratio is taken against.
type BaselineRef struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	Axis  string `json:"axis"` // "rows" or "cols"
}

// Table is one pivot table: all its rows share the values of the group fields.
type Table struct {
	Group   []KV       `json:"group"`
	NRows   int        `json:"n_result_rows"`
	Columns [][]string `json:"columns"` // the values of ColKeys for each column
	Lines   []*Line    `json:"rows"`
}

// KV is one field and its value.
type KV struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Line is one table row: the values of RowKeys and a cell per column.
type Line struct {
	Key      []string `json:"key"`
	Baseline bool     `json:"baseline,omitempty"`
	Cells    []*Cell  `json:"cells"`
}

// Cell statuses beyond the row statuses (ok, failed, incorrect, unavailable, timeout).
const (
	StatusPartial = "partial" // a value from the ok repeats; other repeats did not succeed
	StatusMissing = "missing" // rows succeeded but none has the metric (e.g. a forward-only baseline)
	StatusEmpty   = "empty"   // no row for this cell
)

// Cell is the aggregate of the result rows that fall in one row × column.
type Cell struct {
	Status   string         `json:"status"`
	Value    *float64       `json:"value,omitempty"`
	Lo       *float64       `json:"lo,omitempty"`
	Hi       *float64       `json:"hi,omitempty"`
	Spread   string         `json:"spread,omitempty"` // "p20-p80" (within one row) or "min-max" (across repeats)
	N        int            `json:"n"`                // repeats that gave a value
	Total    int            `json:"total"`            // result rows in the cell
	Statuses map[string]int `json:"statuses,omitempty"`
	Ratio    *float64       `json:"ratio,omitempty"`
	Reasons  []string       `json:"reasons,omitempty"` // first line of the error of failed rows
}

var defaultMetrics = []string{"fwdbwd_ms", "fwd_ms", "ms", "tokens_per_s", "accuracy", "loss"}

// severity orders non-ok statuses: the worst one names a cell with no value.
var severity = map[string]int{"incorrect": 5, "failed": 4, "timeout": 3, "oom": 3, "nan": 3, "unavailable": 2}

// Pivot builds the tables. Errors name what was asked for and what exists.
func Pivot(rows []Row, o Options) (*Report, error) {
	if len(rows) == 0 {
		return nil, fmt.Errorf("empty selection: no rows to report")
	}
	fields := visibleFields(rows)
	metrics := NumericFields(rows)
	if o.Metric == "" {
		for _, m := range defaultMetrics {
			if hasNumeric(rows, m) {
				o.Metric = m
				break
			}
		}
		if o.Metric == "" {
			return nil, fmt.Errorf("no --metric given and none of the usual ones (%s) is present; metrics in the selected rows: %s",
				strings.Join(defaultMetrics, ", "), strings.Join(metrics, ", "))
		}
	} else if !hasNumeric(rows, o.Metric) {
		return nil, fmt.Errorf("unknown metric %q; metrics in the selected rows: %s", o.Metric, strings.Join(metrics, ", "))
	}
	if len(o.Rows) == 0 {
		if k := firstPresent(rows, "op", "model", "task"); k != "" {
			o.Rows = []string{k}
		} else {
			o.Rows = []string{FieldRun}
		}
	}
	if o.Cols == nil && hasField(rows, "T") && !contains(o.Rows, "T") {
		o.Cols = []string{"T"}
	}
	for _, k := range append(append([]string{}, o.Rows...), o.Cols...) {
		if !hasField(rows, k) {
			return nil, fmt.Errorf("no row has field %q (fields: %s)", k, strings.Join(fields, ", "))
		}
	}
	if o.Agg == "" {
		o.Agg = "median"
	}
	if !contains(aggregations, o.Agg) {
		return nil, fmt.Errorf("unknown aggregation %q (expected one of %s)", o.Agg, strings.Join(aggregations, ", "))
	}
	if o.Better == "" {
		o.Better = betterDirection(o.Metric)
	} else if o.Better != "lower" && o.Better != "higher" {
		return nil, fmt.Errorf("bad --better %q (expected lower or higher)", o.Better)
	}
	axes := o.Axes
	if axes == nil {
		axes = DefaultAxes
	}
	rep := &Report{Metric: o.Metric, Unit: unitOf(o.Metric), Better: o.Better, Agg: o.Agg, ColKeys: o.Cols}

	// Groups: never mix machines or software versions in one table.
	groupKeys := o.Group
	if len(groupKeys) == 1 && groupKeys[0] == "none" {
		groupKeys = nil
		rep.Notes = append(rep.Notes, "grouping by device and versions is off (--group none): rows from different machines or versions may share a cell")
	} else if groupKeys == nil {
		groupKeys = GroupFields(rows)
		if len(groupKeys) == 0 {
			rep.Notes = append(rep.Notes, "the rows carry no device or version fields: nothing shows whether they come from one machine")
		}
	} else {
		for _, k := range groupKeys {
			if !hasField(rows, k) {
				return nil, fmt.Errorf("--group: no row has field %q (fields: %s)", k, strings.Join(fields, ", "))
			}
		}
	}
	rep.GroupKeys = groupKeys

	// Variants: a cell must hold repeats of one variant. Axes that differ inside a cell become row keys.
	split := splitKeys(rows, groupKeys, o.Rows, o.Cols, axes, o.Merge)
	rowKeys := append(append([]string{}, o.Rows...), split...)
	rep.RowKeys = rowKeys
	if len(split) > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("cells would mix variants that differ in %s: rows are split by %s (choose with --filter, or aggregate with --merge)", strings.Join(split, ", "), map[bool]string{true: "it", false: "them"}[len(split) == 1]))
	}
	rep.Merged = o.Merge
	if len(o.Merge) > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("cells aggregate (%s) over variants that differ in %s (--merge)", o.Agg, strings.Join(o.Merge, ", ")))
	}

	for _, k := range AllFields(rows) {
		if notGrouping.MatchString(k) && len(distinct(rows, k)) > 1 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s differs between rows (%s); it does not change measurements and does not split tables", k, strings.Join(nonEmpty(distinct(rows, k)), ", ")))
		}
	}
	base, err := resolveBaseline(rows, o.Baseline, o.Rows, o.Cols)
	if err != nil {
		return nil, err
	}
	rep.Baseline = base

	groups := map[string][]Row{}
	var order []string
	for _, r := range rows {
		g := joinKey(values(r, groupKeys))
		if _, ok := groups[g]; !ok {
			order = append(order, g)
		}
		groups[g] = append(groups[g], r)
	}
	sort.Slice(order, func(i, j int) bool { return lessKey(splitKey(order[i]), splitKey(order[j])) })
	if len(order) > 1 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("the rows come from %d device/version groups (%s differ): each has its own table", len(order), strings.Join(differing(rows, groupKeys), ", ")))
	}
	for _, g := range order {
		t := buildTable(groups[g], groupKeys, rowKeys, o, base)
		rep.Tables = append(rep.Tables, t)
	}
	if base != nil {
		found := false
		for _, t := range rep.Tables {
			for _, l := range t.Lines {
				found = found || l.Baseline
			}
			if base.Axis == "cols" {
				for _, c := range t.Columns {
					found = found || c[indexOf(o.Cols, base.Key)] == base.Value
				}
			}
		}
		if !found {
			return nil, fmt.Errorf("baseline %s=%s has no rows in the selection", base.Key, base.Value)
		}
	}
	return rep, nil
}

func hasNumeric(rows []Row, key string) bool {
	for _, r := range rows {
		if v, ok := r.Get(key); ok {
			if _, ok := v.(float64); ok {
				return true
			}
		}
	}
	return false
}

func buildTable(rows []Row, groupKeys, rowKeys []string, o Options, base *BaselineRef) *Table {
	t := &Table{NRows: len(rows)}
	if len(rows) > 0 {
		for _, k := range groupKeys {
			s, _ := rows[0].Str(k)
			t.Group = append(t.Group, KV{k, s})
		}
	}
	type cellRows struct{ rows []Row }
	cells := map[string]map[string]*cellRows{}
	lineKeys := map[string][]string{}
	colKeys := map[string][]string{}
	for _, r := range rows {
		lk, ck := values(r, rowKeys), values(r, o.Cols)
		l, c := joinKey(lk), joinKey(ck)
		lineKeys[l], colKeys[c] = lk, ck
		if cells[l] == nil {
			cells[l] = map[string]*cellRows{}
		}
		if cells[l][c] == nil {
			cells[l][c] = &cellRows{}
		}
		cells[l][c].rows = append(cells[l][c].rows, r)
	}
	var lines, cols []string
	for l := range lineKeys {
		lines = append(lines, l)
	}
	for c := range colKeys {
		cols = append(cols, c)
	}
	sort.Slice(cols, func(i, j int) bool { return lessKey(colKeys[cols[i]], colKeys[cols[j]]) })
	isBase := func(key []string, keys []string) bool {
		return base != nil && sameValueStr(key[indexOf(keys, base.Key)], base.Value)
	}
	sort.Slice(lines, func(i, j int) bool {
		bi := base != nil && base.Axis == "rows" && isBase(lineKeys[lines[i]], rowKeys)
		bj := base != nil && base.Axis == "rows" && isBase(lineKeys[lines[j]], rowKeys)
		if bi != bj {
			return bi
		}
		return lessKey(lineKeys[lines[i]], lineKeys[lines[j]])
	})
	for _, c := range cols {
		t.Columns = append(t.Columns, colKeys[c])
	}
	for _, l := range lines {
		line := &Line{Key: lineKeys[l], Baseline: base != nil && base.Axis == "rows" && isBase(lineKeys[l], rowKeys)}
		for _, c := range cols {
			var cr []Row
			if x := cells[l][c]; x != nil {
				cr = x.rows
			}
			line.Cells = append(line.Cells, computeCell(cr, o.Metric, o.Agg))
		}
		t.Lines = append(t.Lines, line)
	}
	if base != nil {
		applyRatios(t, base, rowKeys, o)
	}
	return t
}

func applyRatios(t *Table, base *BaselineRef, rowKeys []string, o Options) {
	if base.Axis == "rows" {
		bi := indexOf(rowKeys, base.Key)
		for _, l := range t.Lines {
			if l.Baseline {
				continue
			}
			partner := findPartner(t.Lines, l.Key, bi, base.Value, len(o.Rows))
			if partner == nil {
				continue
			}
			for j, c := range l.Cells {
				setRatio(c, partner.Cells[j])
			}
		}
		return
	}
	ci := indexOf(o.Cols, base.Key)
	for _, l := range t.Lines {
		for j, c := range l.Cells {
			if sameValueStr(t.Columns[j][ci], base.Value) {
				continue
			}
			want := append([]string{}, t.Columns[j]...)
			want[ci] = base.Value
			for k, col := range t.Columns {
				if joinKey(col) == joinKey(want) {
					setRatio(c, l.Cells[k])
				}
			}
		}
	}
}

// findPartner finds the baseline line for a line: the same user-chosen row keys with the baseline value
// substituted; split keys must match too unless exactly one baseline line fits (a baseline without that axis).
func findPartner(lines []*Line, key []string, bi int, bval string, nUser int) *Line {
	var loose []*Line
	for _, l := range lines {
		if !l.Baseline {
			continue
		}
		match := true
		for i := 0; i < nUser; i++ {
			// a field the baseline does not have (e.g. constraint for gdn) matches anything
			if i != bi && l.Key[i] != "" && l.Key[i] != key[i] {
				match = false
			}
		}
		if !match {
			continue
		}
		if joinKey(l.Key[nUser:]) == joinKey(key[nUser:]) {
			return l
		}
		loose = append(loose, l)
	}
	if len(loose) == 1 {
		return loose[0]
	}
	return nil
}

func setRatio(c, b *Cell) {
	if c.Value == nil || b.Value == nil || *b.Value == 0 {
		return
	}
	r := *c.Value / *b.Value
	c.Ratio = &r
}

func computeCell(rows []Row, metric, agg string) *Cell {
	c := &Cell{Total: len(rows)}
	if len(rows) == 0 {
		c.Status = StatusEmpty
		return c
	}
	if agg == "last" {
		rows = sortedByStep(rows)
	}
	var vals []float64
	var okRow Row
	nonOK := 0
	for _, r := range rows {
		st := r.Status()
		if c.Statuses == nil {
			c.Statuses = map[string]int{}
		}
		c.Statuses[st]++
		if st != "ok" {
			nonOK++
			if msg := reasonOf(r); msg != "" && !contains(c.Reasons, msg) {
				c.Reasons = append(c.Reasons, msg)
			}
			continue
		}
		if v, ok := r.Num(metric); ok {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				c.Statuses["ok"]--
				c.Statuses["nan"]++
				nonOK++
				continue
			}
			vals = append(vals, v)
			okRow = r
		}
	}
	for st, n := range c.Statuses {
		if n == 0 {
			delete(c.Statuses, st)
		}
	}
	c.N = len(vals)
	if len(vals) == 0 {
		worst, ws := StatusMissing, 0
		for st, n := range c.Statuses {
			if st == "ok" || n == 0 {
				continue
			}
			s := severity[st]
			if s == 0 {
				s = 1
			}
			if s > ws || (s == ws && st < worst) {
				worst, ws = st, s
			}
		}
		c.Status = worst
		return c
	}
	c.Status = "ok"
	if nonOK > 0 {
		c.Status = StatusPartial
	}
	v := aggregate(agg, vals)
	c.Value = &v
	if len(vals) == 1 {
		if lo, hi, ok := companions(okRow, metric); ok {
			c.Lo, c.Hi, c.Spread = &lo, &hi, "p20-p80"
		}
	} else if agg != "last" {
		lo, hi := minMax(vals)
		c.Lo, c.Hi, c.Spread = &lo, &hi, "min-max"
	}
	return c
}

// companions finds a row's own p20/p80 of the metric: fwd_ms → fwd_ms_p20/fwd_ms_p80; ms_median → ms_p20;
// median_ms → p20_ms.
func companions(r Row, metric string) (float64, float64, bool) {
	pairs := [][2]string{{metric + "_p20", metric + "_p80"}}
	for _, suf := range []string{"_median", "_med", "_p50"} {
		if strings.HasSuffix(metric, suf) {
			b := strings.TrimSuffix(metric, suf)
			pairs = append(pairs, [2]string{b + "_p20", b + "_p80"})
		}
	}
	for _, mid := range []string{"median", "p50"} {
		if strings.Contains(metric, mid) {
			pairs = append(pairs, [2]string{strings.Replace(metric, mid, "p20", 1), strings.Replace(metric, mid, "p80", 1)})
		}
	}
	if i := strings.LastIndexByte(metric, '.'); i >= 0 { // {"fwd": {"ms": .., "p20": .., "p80": ..}} flattened
		switch metric[i+1:] {
		case "ms", "median", "p50", "value", "mean", "s":
			pairs = append(pairs, [2]string{metric[:i+1] + "p20", metric[:i+1] + "p80"})
		}
	}
	for _, p := range pairs {
		lo, ok1 := r.Num(p[0])
		hi, ok2 := r.Num(p[1])
		if ok1 && ok2 {
			return lo, hi, true
		}
	}
	return 0, 0, false
}

func reasonOf(r Row) string {
	for _, k := range []string{"error", "reason", "message", "error.message"} {
		if s, ok := r.Str(k); ok && s != "" {
			if i := strings.IndexByte(s, '\n'); i >= 0 {
				s = s[:i]
			}
			if len(s) > 160 {
				s = s[:160] + "…"
			}
			return s
		}
	}
	return ""
}

func sortedByStep(rows []Row) []Row {
	out := append([]Row{}, rows...)
	sort.SliceStable(out, func(i, j int) bool {
		a, ok1 := out[i].Num("step")
		b, ok2 := out[j].Num("step")
		return ok1 && ok2 && a < b
	})
	return out
}

// splitKeys finds the axes that differ between rows of different variants sharing a cell.
func splitKeys(rows []Row, groupKeys, rowKeys, colKeys, axes, merge []string) []string {
	fixed := map[string]bool{}
	for _, k := range append(append(append([]string{}, groupKeys...), rowKeys...), append(colKeys, merge...)...) {
		fixed[k] = true
	}
	perStep := perStepFields(rows)
	present := fieldIndex(rows)
	var cand []string
	for _, a := range axes {
		if !fixed[a] && !perStep[a] && present(a) {
			cand = append(cand, a)
		}
	}
	cellOf := func(r Row) string {
		return joinKey(values(r, groupKeys)) + "\x01" + joinKey(values(r, rowKeys)) + "\x01" + joinKey(values(r, colKeys))
	}
	// a variant is its hash (kernel configuration) and its axis values (the hash may leave out the shape)
	variantOf := func(r Row) string {
		s, _ := r.Str("variant")
		return s + "\x02" + joinKey(values(r, cand)) + "\x02" + joinKey(values(r, merge))
	}
	byCell := map[string]map[string]Row{} // cell → variant → a row
	for _, r := range rows {
		c := cellOf(r)
		if byCell[c] == nil {
			byCell[c] = map[string]Row{}
		}
		byCell[c][variantOf(r)] = r
	}
	need := map[string]bool{}
	unexplained := false
	differs := func(vs map[string]Row, a string) bool {
		seen := map[string]bool{}
		for _, r := range vs {
			s, _ := r.Str(a)
			seen[s] = true
		}
		return len(seen) > 1
	}
	for _, vs := range byCell {
		if len(vs) < 2 {
			continue
		}
		explained := false
		for _, a := range cand {
			if differs(vs, a) {
				need[a] = true
				explained = true
			}
		}
		for _, a := range merge {
			explained = explained || differs(vs, a)
		}
		unexplained = unexplained || !explained
	}
	var out []string
	for _, a := range cand {
		if need[a] {
			out = append(out, a)
		}
	}
	if unexplained && present("variant") {
		// variants differ in nothing we know as an axis: name them by hash
		out = append(out, "variant")
	}
	return out
}

func resolveBaseline(rows []Row, spec string, rowKeys, colKeys []string) (*BaselineRef, error) {
	if spec == "" {
		return nil, nil
	}
	if i := strings.Index(spec, "="); i > 0 {
		key, val := spec[:i], spec[i+1:]
		axis := ""
		switch {
		case contains(rowKeys, key):
			axis = "rows"
		case contains(colKeys, key):
			axis = "cols"
		default:
			return nil, fmt.Errorf("--baseline %s: %q is not a --rows or --cols field (rows: %s; cols: %s)", spec, key, strings.Join(rowKeys, ","), strings.Join(colKeys, ","))
		}
		for _, v := range distinct(rows, key) {
			if sameValueStr(v, val) {
				return &BaselineRef{Key: key, Value: v, Axis: axis}, nil
			}
		}
		return nil, fmt.Errorf("--baseline %s: no row has %s=%s (%s has: %s)", spec, key, val, key, strings.Join(nonEmpty(distinct(rows, key)), ", "))
	}
	var tried []string
	for _, pair := range []struct {
		keys []string
		axis string
	}{{rowKeys, "rows"}, {colKeys, "cols"}} {
		for _, k := range pair.keys {
			vals := distinct(rows, k)
			for _, v := range vals {
				if sameValueStr(v, spec) {
					return &BaselineRef{Key: k, Value: v, Axis: pair.axis}, nil
				}
			}
			tried = append(tried, fmt.Sprintf("%s has %s", k, strings.Join(nonEmpty(vals), ", ")))
		}
	}
	return nil, fmt.Errorf("--baseline %s matches no value of the row or column fields (%s)", spec, strings.Join(tried, "; "))
}

func sameValueStr(have, want string) bool { return sameValue(have, want) }

func values(r Row, keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i], _ = r.Str(k)
	}
	return out
}

func joinKey(k []string) string  { return strings.Join(k, "\x00") }
func splitKey(s string) []string { return strings.Split(s, "\x00") }

func lessKey(a, b []string) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return lessValue(a[i], b[i])
		}
	}
	return len(a) < len(b)
}

func differing(rows []Row, keys []string) []string {
	var out []string
	for _, k := range keys {
		if len(distinct(rows, k)) > 1 {
			out = append(out, k)
		}
	}
	return out
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func indexOf(xs []string, x string) int {
	for i, y := range xs {
		if y == x {
			return i
		}
	}
	return -1
}

// perStepFields are the fields that change from step to step inside one training run (lr under a schedule,
// grad_norm, ...): measurements, never axes.
func perStepFields(rows []Row) map[string]bool {
	first := map[string]map[string]string{} // file → field → first value
	out := map[string]bool{}
	for _, r := range rows {
		if _, ok := r["step"]; !ok {
			continue
		}
		f, _ := r[FieldFile].(string)
		if first[f] == nil {
			first[f] = map[string]string{}
		}
		for k, v := range r {
			s := FormatValue(v)
			if old, ok := first[f][k]; !ok {
				first[f][k] = s
			} else if old != s {
				out[k] = true
			}
		}
	}
	return out
}
