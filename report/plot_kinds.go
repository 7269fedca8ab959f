package report

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// PlotKinds are the figures BuildPlots knows.
var PlotKinds = []string{"throughput", "chunk", "loss", "tokens", "mqar", "stability"}

// PlotOptions choose figures.
type PlotOptions struct {
	Kinds    []string // subset of PlotKinds; empty: every kind the rows support
	Metric   string   // y of the throughput figure (a tokens/s or *_ms field) and time of the chunk figure
	ChunkRef float64  // reference chunk size for speed-ups (default 64 when present, else the smallest)
	Group    []string // device/version fields that split figures (nil: detected; ["none"]: no split)
}

var (
	tokensRE  = regexp.MustCompile(`(tokens_per_s|tok_per_s|throughput)`)
	msRE      = regexp.MustCompile(`(^|[_.])ms$`)
	quantRE   = regexp.MustCompile(`[_.](p\d+|min|max|std)$`)
	accFields = []string{"accuracy", "acc", "mqar_accuracy", "test_accuracy", "eval_accuracy"}
	widthKeys = []string{"d_model", "width", "model_width", "hidden_size"}
	tokensKey = []string{"tokens", "tokens_seen", "consumed_tokens", "total_tokens"}
)

// BuildPlots makes the figures the rows support (or the kinds asked for: a kind the rows cannot support is
// then an error naming the fields it needs).
func BuildPlots(rows []Row, o PlotOptions) ([]*Figure, error) {
	if len(rows) == 0 {
		return nil, fmt.Errorf("empty selection: no rows to plot")
	}
	kinds := o.Kinds
	explicit := len(kinds) > 0
	if !explicit {
		kinds = PlotKinds
	}
	for _, k := range kinds {
		if !contains(PlotKinds, k) {
			return nil, fmt.Errorf("unknown plot kind %q (expected one of %s)", k, strings.Join(PlotKinds, ", "))
		}
	}
	var figs []*Figure
	for _, k := range kinds {
		b := &plotBuilder{o: o, colors: map[string]int{}} // one colour per series label within a kind
		var fs []*Figure
		var err error
		switch k {
		case "throughput":
			fs, err = b.throughput(rows)
		case "chunk":
			fs, err = b.chunk(rows)
		case "loss":
			fs, err = b.loss(rows)
		case "tokens":
			fs, err = b.tokens(rows)
		case "mqar":
			fs, err = b.mqar(rows)
		case "stability":
			fs, err = b.stability(rows)
		}
		if err != nil {
			var ne notApplicable
			if !explicit && asNotApplicable(err, &ne) {
				continue
			}
			return nil, fmt.Errorf("plot %s: %w", k, err)
		}
		figs = append(figs, fs...)
	}
	if len(figs) == 0 {
		return nil, fmt.Errorf("no plot fits these rows: need op+T+tokens/s or *_ms (throughput), chunk_size (chunk), step+loss (loss, tokens), accuracy+d_model (mqar) or schur_stable (stability)")
	}
	return figs, nil
}

// notApplicable: the rows lack what a figure needs (skipped when the kind was not asked for).
type notApplicable struct{ msg string }

func (n notApplicable) Error() string { return n.msg }

func asNotApplicable(err error, out *notApplicable) bool {
	n, ok := err.(notApplicable)
	if ok {
		*out = n
	}
	return ok
}

type plotBuilder struct {
	o      PlotOptions
	colors map[string]int
}

func (b *plotBuilder) groupKeys(rows []Row) []string {
	if len(b.o.Group) == 1 && b.o.Group[0] == "none" {
		return nil
	}
	if b.o.Group != nil {
		return b.o.Group
	}
	return GroupFields(rows)
}

// lineSpec describes a family of line figures.
type lineSpec struct {
	kind, name, title, xlabel, ylabel string
	x                                 string
	y                                 func(Row) (v, lo, hi float64, hasErr, ok bool)
	series                            []string // fields naming a line
	axes                              []string // fields that may split figures (when present everywhere) or lines
	merge                             []string // fields aggregated over
	agg                               string   // median or max
	markers                           bool
	yRange                            *[2]float64
	yFromZero                         bool // start a linear y axis at 0 (throughputs)
	refY                              *float64
	describe                          func(Row) string // names a point in "not shown" notes
}

func (b *plotBuilder) lines(rows []Row, s lineSpec) ([]*Figure, error) {
	groupKeys := b.groupKeys(rows)
	used := append(append([]string{s.x}, s.series...), s.merge...)
	var facetKeys, extra []string
	for _, a := range s.axes {
		if contains(used, a) || !hasField(rows, a) {
			continue
		}
		vals := distinct(rows, a)
		nonEmptyVals := 0
		missing := false
		for _, v := range vals {
			if v == "" {
				missing = true
			} else {
				nonEmptyVals++
			}
		}
		if nonEmptyVals < 2 {
			continue
		}
		if missing {
			extra = append(extra, a)
		} else {
			facetKeys = append(facetKeys, a)
		}
	}
	allFacet := append(append([]string{}, groupKeys...), facetKeys...)
	parts := map[string][]Row{}
	var order []string
	for _, r := range rows {
		k := joinKey(values(r, allFacet))
		if _, ok := parts[k]; !ok {
			order = append(order, k)
		}
		parts[k] = append(parts[k], r)
	}
	sort.Slice(order, func(i, j int) bool { return lessKey(splitKey(order[i]), splitKey(order[j])) })
	varying := map[string]bool{}
	for _, k := range allFacet {
		if len(distinct(rows, k)) > 1 {
			varying[k] = true
		}
	}
	var figs []*Figure
	for _, pk := range order {
		prow := parts[pk]
		fvals := splitKey(pk)
		type acc struct {
			ys     []float64
			lo, hi float64
			hasErr bool
			nRows  int
		}
		data := map[string]map[float64]*acc{}
		var notes []string
		for _, r := range prow {
			x, okx := r.Num(s.x)
			if !okx {
				continue
			}
			label := seriesLabel(r, s.series, extra)
			if st := r.Status(); st != "ok" {
				notes = append(notes, fmt.Sprintf("%s at %s=%s: %s", label, s.x, FormatValue(x), st))
				continue
			}
			v, lo, hi, hasErr, ok := s.y(r)
			if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
				continue
			}
			if data[label] == nil {
				data[label] = map[float64]*acc{}
			}
			a := data[label][x]
			if a == nil {
				a = &acc{}
				data[label][x] = a
			}
			a.ys = append(a.ys, v)
			a.lo, a.hi, a.hasErr = lo, hi, hasErr
			a.nRows++
		}
		if len(data) == 0 {
			continue
		}
		xsSeen := map[float64]bool{}
		for _, m := range data {
			for x := range m {
				xsSeen[x] = true
			}
		}
		if len(xsSeen) < 2 {
			continue // one x value: nothing to draw a line through
		}
		var ss []series
		var allX, allY []float64
		var labels []string
		for l := range data {
			labels = append(labels, l)
		}
		sort.Strings(labels)
		for _, l := range labels {
			sr := series{label: l}
			for x, a := range data[l] {
				pt := point{x: x}
				if s.agg == "max" {
					_, pt.y = minMax(a.ys)
				} else {
					pt.y = median(a.ys)
				}
				if len(a.ys) == 1 && a.hasErr {
					pt.lo, pt.hi, pt.err = a.lo, a.hi, true
				} else if len(a.ys) > 1 && s.agg != "max" {
					pt.lo, pt.hi = minMax(a.ys)
					pt.err = true
				}
				sr.pts = append(sr.pts, pt)
				allX = append(allX, x)
				allY = append(allY, pt.y)
				if pt.err {
					allY = append(allY, pt.lo, pt.hi)
				}
			}
			ss = append(ss, sr)
		}
		title := s.title
		if d := facetTitle(allFacet, fvals, varying, groupKeys); d != "" {
			title += "\n" + wrapTitle(d, 70)
		}
		p, leg := newPlot(title, s.xlabel, s.ylabel)
		if s.refY != nil {
			allY = append(allY, *s.refY)
		}
		setXAxis(&p.X, allX)
		if s.yRange != nil {
			p.Y.Min, p.Y.Max = s.yRange[0], s.yRange[1]
			p.Y.Tick.Marker = compactTicks{plot.DefaultTicks{}}
		} else {
			setYAxis(&p.Y, allY)
			if s.yFromZero && !isLog(p.Y) {
				p.Y.Min = 0
			}
		}
		if s.refY != nil {
			lo, hi := minMax(allX)
			ref, _ := plotter.NewLine(plotter.XYs{{X: lo, Y: *s.refY}, {X: hi, Y: *s.refY}})
			ref.Color = rgb(0x66, 0x66, 0x66)
			ref.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(ref)
		}
		if err := addLines(p, leg, ss, b.colors, s.markers); err != nil {
			return nil, err
		}
		name := s.name
		for i, k := range allFacet {
			if varying[k] {
				v := fvals[i]
				if contains(groupKeys, k) && (k == "device" || k == "device.name" || k == "gpu" || k == "card" || k == "device_name") {
					v = shortDevice(v)
				} else if !contains(groupKeys, k) {
					v = k + "-" + v
				}
				name += "_" + slug(v)
			}
		}
		if len(notes) > 0 {
			notes = []string{"rows not drawn (no value): " + strings.Join(countDuplicates(notes), "; ")}
		}
		figs = append(figs, &Figure{Kind: s.kind, Name: name, Title: strings.ReplaceAll(title, "\n", " — "), Notes: notes, Plot: p, Legend: leg, Series: exportSeries(ss)})
	}
	return figs, nil
}

func seriesLabel(r Row, keys, extra []string) string {
	var parts []string
	for _, k := range keys {
		if v, ok := r.Str(k); ok && v != "" {
			parts = append(parts, v)
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "(all)")
	}
	var ex []string
	for _, k := range extra {
		if v, ok := r.Str(k); ok && v != "" {
			ex = append(ex, k+"="+v)
		}
	}
	s := strings.Join(parts, " / ")
	if len(ex) > 0 {
		s += " (" + strings.Join(ex, ", ") + ")"
	}
	return s
}

func facetTitle(keys, vals []string, varying map[string]bool, groupKeys []string) string {
	var parts []string
	for i, k := range keys {
		v := vals[i]
		if v == "" {
			v = "?"
		}
		if contains(groupKeys, k) {
			parts = append(parts, shortKey(k)+" "+v)
		} else {
			parts = append(parts, k+"="+v)
		}
	}
	return strings.Join(parts, " · ")
}

func shortDevice(d string) string {
	d = strings.TrimPrefix(d, "NVIDIA ")
	if f := strings.Fields(d); len(f) > 0 {
		return f[0]
	}
	return d
}

// metricY reads a metric and its own p20/p80.
func metricY(metric string) func(Row) (float64, float64, float64, bool, bool) {
	return func(r Row) (float64, float64, float64, bool, bool) {
		v, ok := r.Num(metric)
		if !ok {
			return 0, 0, 0, false, false
		}
		lo, hi, has := companions(r, metric)
		return v, lo, hi, has, true
	}
}

// --- throughput vs sequence length ----------------------------------------------------------------------

func (b *plotBuilder) throughput(rows []Row) ([]*Figure, error) {
	var sub []Row
	for _, r := range rows {
		if _, ok := r.Get("T"); ok {
			if _, ok := r.Get("op"); ok {
				sub = append(sub, r)
			}
		}
	}
	if len(sub) == 0 {
		return nil, notApplicable{"no row has both op and T"}
	}
	type yfield struct {
		name, label string
		f           func(Row) (float64, float64, float64, bool, bool)
	}
	var ys []yfield
	all := NumericFields(sub)
	if b.o.Metric != "" && (tokensRE.MatchString(b.o.Metric) || msRE.MatchString(b.o.Metric)) {
		all = []string{b.o.Metric}
	}
	for _, m := range all {
		if tokensRE.MatchString(m) && !quantRE.MatchString(m) && !strings.Contains(m, "per_gpu") {
			ys = append(ys, yfield{m, m + " (tokens/s)", metricY(m)})
		}
	}
	if len(ys) == 0 {
		// derive tokens/s = B·T / time from each measured time
		for _, m := range all {
			if !msRE.MatchString(m) || quantRE.MatchString(m) {
				continue
			}
			m := m
			mode := strings.TrimRight(strings.TrimSuffix(m, "ms"), "_.")
			lbl := "throughput (tokens/s) = B·T / " + m
			if mode != "" {
				lbl = mode + " throughput (tokens/s) = B·T / " + m
			}
			ys = append(ys, yfield{strings.TrimPrefix(mode+"_tokens_per_s", "_"), lbl, func(r Row) (float64, float64, float64, bool, bool) {
				ms, ok1 := r.Num(m)
				T, ok2 := r.Num("T")
				B, ok3 := r.Num("B")
				if !ok3 {
					B = 1
				}
				if !ok1 || !ok2 || ms <= 0 {
					return 0, 0, 0, false, false
				}
				v := B * T / (ms / 1e3)
				if lo, hi, ok := companions(r, m); ok && lo > 0 && hi > 0 {
					return v, B * T / (hi / 1e3), B * T / (lo / 1e3), true, true
				}
				return v, 0, 0, false, true
			}})
		}
	}
	if len(ys) == 0 {
		return nil, notApplicable{"no tokens/s or *_ms field beside op and T"}
	}
	var figs []*Figure
	for _, y := range ys {
		fs, err := b.lines(sub, lineSpec{
			kind: "throughput", name: "throughput_" + slug(y.name), title: "Throughput vs sequence length (" + y.name + ")",
			xlabel: axisLabel("T"), ylabel: y.label, x: "T", y: y.f, series: []string{"op"},
			axes: throughputAxes(sub), agg: "median", markers: true, yFromZero: true,
		})
		if err != nil {
			return nil, err
		}
		figs = append(figs, fs...)
	}
	return figs, nil
}

// throughputAxes leaves out the fields that follow from T (B in a fixed-token sweep, B = tokens / T): as facets
// they would split every line into one-point figures.
func throughputAxes(rows []Row) []string {
	var axes []string
	for _, a := range DefaultAxes {
		if a != "T" && determinedBy(rows, a, "T") {
			continue
		}
		axes = append(axes, a)
	}
	return axes
}

// determinedBy says whether field a takes one value for each value of field by (and varies at all).
func determinedBy(rows []Row, a, by string) bool {
	seen := map[string]string{}
	vals := map[string]bool{}
	for _, r := range rows {
		av, ok1 := r.Get(a)
		bv, ok2 := r.Get(by)
		if !ok1 || !ok2 {
			return false
		}
		ak, bk := fmt.Sprint(av), fmt.Sprint(bv)
		if prev, ok := seen[bk]; ok && prev != ak {
			return false
		}
		seen[bk] = ak
		vals[ak] = true
	}
	return len(vals) > 1
}

// --- speed-up vs chunk size -----------------------------------------------------------------------------

func (b *plotBuilder) chunk(rows []Row) ([]*Figure, error) {
	var sub []Row
	for _, r := range rows {
		if _, ok := r.Num("chunk_size"); ok {
			sub = append(sub, r)
		}
	}
	if len(distinct(sub, "chunk_size")) < 2 {
		return nil, notApplicable{"fewer than two chunk sizes"}
	}
	metric := ""
	if b.o.Metric != "" && msRE.MatchString(b.o.Metric) {
		metric = b.o.Metric
	} else {
		metric = firstNumeric(sub, "fwdbwd_ms", "fwd_ms", "ms")
		if metric == "" {
			for _, m := range NumericFields(sub) {
				if msRE.MatchString(m) && !quantRE.MatchString(m) {
					metric = m
					break
				}
			}
		}
	}
	if metric == "" {
		return nil, notApplicable{"no time field (*_ms) beside chunk_size"}
	}
	sizes := distinct(sub, "chunk_size")
	ref := b.o.ChunkRef
	if ref == 0 {
		ref = 64
	}
	found := false
	for _, s := range sizes {
		found = found || sameValue(s, FormatValue(ref))
	}
	if !found {
		if b.o.ChunkRef != 0 {
			return nil, fmt.Errorf("--chunk-ref %s: no row has that chunk size (chunk sizes: %s)", FormatValue(b.o.ChunkRef), strings.Join(sizes, ", "))
		}
		ref, _ = toFloat(sizes[0])
	}
	groupKeys := b.groupKeys(sub)
	var matchKeys []string
	for _, a := range DefaultAxes {
		if a != "chunk_size" && hasField(sub, a) {
			matchKeys = append(matchKeys, a)
		}
	}
	matchKeys = append(matchKeys, groupKeys...)
	refVals := map[string][]float64{}
	for _, r := range sub {
		if c, _ := r.Num("chunk_size"); c == ref && r.Status() == "ok" {
			if v, ok := r.Num(metric); ok && v > 0 {
				k := joinKey(values(r, matchKeys))
				refVals[k] = append(refVals[k], v)
			}
		}
	}
	series := []string{"op"}
	if hasField(sub, "constraint") {
		series = []string{"constraint"}
	}
	yf := func(r Row) (float64, float64, float64, bool, bool) {
		rv, ok := refVals[joinKey(values(r, matchKeys))]
		v, ok2 := r.Num(metric)
		if !ok || !ok2 || v <= 0 {
			return 0, 0, 0, false, false
		}
		base := median(rv)
		if lo, hi, ok := companions(r, metric); ok && lo > 0 && hi > 0 {
			return base / v, base / hi, base / lo, true, true
		}
		return base / v, 0, 0, false, true
	}
	one := 1.0
	return b.lines(sub, lineSpec{
		kind: "chunk", name: "chunk_speedup", title: fmt.Sprintf("Speed-up vs chunk size (%s)", metric),
		xlabel: axisLabel("chunk_size"), ylabel: fmt.Sprintf("speed-up vs chunk_size=%s (×, >1 is faster)", FormatValue(ref)),
		x: "chunk_size", y: yf, series: series, axes: DefaultAxes, agg: "median", markers: true, refY: &one,
	})
}

// countDuplicates sorts notes and folds repeats into one entry with a count ("mdn at T=8192: failed (×3 rows)"),
// so that points merged over an axis (e.g. learning rates) do not repeat the same note.
func countDuplicates(notes []string) []string {
	sort.Strings(notes)
	var out []string
	for i := 0; i < len(notes); {
		j := i
		for j < len(notes) && notes[j] == notes[i] {
			j++
		}
		if n := j - i; n > 1 {
			out = append(out, fmt.Sprintf("%s (×%d rows)", notes[i], n))
		} else {
			out = append(out, notes[i])
		}
		i = j
	}
	return out
}

// --- training -------------------------------------------------------------------------------------------

// trainingRows are the rows of a training curve: they have a step. Sweep result rows (one per grid point, with a
// "point" id) are left out even when they report their last step and loss, as MQAR points do: drawn as one
// curve they would join the final losses of unrelated runs.
func trainingRows(rows []Row) []Row {
	var sub []Row
	for _, r := range rows {
		if _, isPoint := r.Str("point"); isPoint {
			continue
		}
		if _, ok := r.Num("step"); ok {
			sub = append(sub, r)
		}
	}
	return sub
}

func runSeries(rows []Row) []string {
	key := "model"
	if !hasField(rows, "model") {
		return []string{FieldRun}
	}
	runs := map[string]map[string]bool{}
	for _, r := range rows {
		m, _ := r.Str(key)
		if runs[m] == nil {
			runs[m] = map[string]bool{}
		}
		run, _ := r.Str(FieldRun)
		runs[m][run] = true
	}
	for _, rs := range runs {
		if len(rs) > 1 {
			return []string{key, FieldRun}
		}
	}
	return []string{key}
}

func (b *plotBuilder) loss(rows []Row) ([]*Figure, error) {
	var sub []Row
	for _, r := range trainingRows(rows) {
		if _, ok := r.Num("loss"); ok {
			sub = append(sub, r)
		}
	}
	if len(sub) == 0 {
		return nil, notApplicable{"no row has step and loss"}
	}
	x := firstNumeric(sub, tokensKey...)
	if x == "" {
		x = "step"
	}
	return b.lines(sub, lineSpec{
		kind: "loss", name: "train_loss", title: "Training loss vs " + map[bool]string{true: "tokens", false: "steps"}[x != "step"],
		xlabel: axisLabel(x), ylabel: "training loss (nats/token)", x: x, y: metricY("loss"),
		series: runSeries(sub), agg: "median",
	})
}

func (b *plotBuilder) tokens(rows []Row) ([]*Figure, error) {
	sub := trainingRows(rows)
	metric := firstNumeric(sub, "tokens_per_s", "tokens_per_s_total", "tps", "throughput")
	if metric == "" {
		return nil, notApplicable{"no row has step and tokens_per_s"}
	}
	groupKeys := b.groupKeys(sub)
	seriesKeys := runSeries(sub)
	parts := map[string][]Row{}
	var order []string
	for _, r := range sub {
		k := joinKey(values(r, groupKeys))
		if _, ok := parts[k]; !ok {
			order = append(order, k)
		}
		parts[k] = append(parts[k], r)
	}
	sort.Strings(order)
	var figs []*Figure
	for _, pk := range order {
		bySeries := map[string][]Row{}
		for _, r := range parts[pk] {
			if _, ok := r.Num(metric); ok && r.Status() == "ok" {
				l := seriesLabel(r, seriesKeys, nil)
				bySeries[l] = append(bySeries[l], r)
			}
		}
		var labels []string
		for l := range bySeries {
			labels = append(labels, l)
		}
		sort.Strings(labels)
		if len(labels) == 0 {
			continue
		}
		title := "Training throughput per model (" + metric + ")"
		if d := facetTitle(groupKeys, splitKey(pk), nil, groupKeys); d != "" {
			title += "\n" + wrapTitle(d, 70)
		}
		p, _ := newPlot(title, strings.Join(seriesKeys, " / "), "tokens/s: median over steps, first 10% dropped; bars p20–p80")
		vals := make(plotter.Values, len(labels))
		var errs errPoints
		var ys []float64
		for i, l := range labels {
			rs := sortedByStep(bySeries[l])
			rs = rs[len(rs)/10:]
			var xs []float64
			for _, r := range rs {
				v, _ := r.Num(metric)
				xs = append(xs, v)
			}
			vals[i] = median(xs)
			c1 := append([]float64(nil), xs...)
			c2 := append([]float64(nil), xs...)
			errs = append(errs, point{x: float64(i), y: vals[i], lo: quantile(c1, 0.2), hi: quantile(c2, 0.8), err: true})
			ys = append(ys, vals[i], errs[i].hi)
		}
		for i, l := range labels {
			bc, err := plotter.NewBarChart(plotter.Values{vals[i]}, vg.Points(36))
			if err != nil {
				return nil, err
			}
			bc.Color = colors8[colorIndex(b.colors, l)%len(colors8)]
			bc.LineStyle.Width = 0
			bc.XMin = float64(i)
			p.Add(bc)
		}
		eb, err := plotter.NewYErrorBars(errs)
		if err != nil {
			return nil, err
		}
		eb.CapWidth = vg.Points(8)
		p.Add(eb)
		p.NominalX(labels...)
		p.X.Min, p.X.Max = -0.6, float64(len(labels))-0.4
		p.Y.Min = 0
		_, hi := minMax(ys)
		p.Y.Max = hi * 1.1
		p.Y.Tick.Marker = compactTicks{plot.DefaultTicks{}}
		name := "train_tokens_per_s"
		if len(order) > 1 {
			name += "_" + slug(shortDevice(splitKey(pk)[0]))
		}
		var ss []series
		for i, l := range labels {
			ss = append(ss, series{label: l, pts: []point{errs[i]}})
		}
		figs = append(figs, &Figure{Kind: "tokens", Name: name, Title: strings.ReplaceAll(title, "\n", " — "), Plot: p, Series: exportSeries(ss)})
	}
	return figs, nil
}

// --- MQAR -----------------------------------------------------------------------------------------------

func (b *plotBuilder) mqar(rows []Row) ([]*Figure, error) {
	acc := firstNumeric(rows, accFields...)
	width := firstNumeric(rows, widthKeys...)
	if acc == "" || width == "" {
		return nil, notApplicable{"no row has an accuracy field (" + strings.Join(accFields, ", ") + ") and a width (" + strings.Join(widthKeys, ", ") + ")"}
	}
	var sub []Row
	for _, r := range rows {
		if _, ok := r.Get(width); ok {
			if _, ok := r.Get(acc); ok || r.Status() != "ok" {
				sub = append(sub, r)
			}
		}
	}
	series := []string{"model"}
	if !hasField(sub, "model") {
		series = []string{"op"}
	}
	if hasField(sub, "constraint") {
		series = append(series, "constraint")
	}
	var axes []string
	for _, a := range DefaultAxes {
		if a != "lr" && a != "seed" {
			axes = append(axes, a)
		}
	}
	return b.lines(sub, lineSpec{
		kind: "mqar", name: "mqar_accuracy", title: "MQAR accuracy vs model width (best over learning rates)",
		xlabel: axisLabel(width), ylabel: acc + " (fraction of query positions)", x: width, y: metricY(acc),
		series: series, axes: axes, merge: []string{"lr", "seed"}, agg: "max", markers: true,
		yRange: &[2]float64{0, 1.02},
	})
}

func firstNumeric(rows []Row, keys ...string) string {
	for _, k := range keys {
		if hasNumeric(rows, k) {
			return k
		}
	}
	return ""
}

func isLog(a plot.Axis) bool {
	_, ok := a.Scale.(plot.LogScale)
	return ok
}

// wrapTitle breaks a " · "-separated description into lines of at most width characters.
func wrapTitle(s string, width int) string {
	parts := strings.Split(s, " · ")
	var lines []string
	cur := ""
	for _, p := range parts {
		if cur != "" && len(cur)+3+len(p) > width {
			lines = append(lines, cur)
			cur = p
			continue
		}
		if cur == "" {
			cur = p
		} else {
			cur += " · " + p
		}
	}
	if cur != "" {
		lines = append(lines, cur)
	}
	return strings.Join(lines, "\n")
}
