package report

import (
	"fmt"
	"image/color"
	"math"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/palette"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// StabilityParams are the fields of a stability grid that may span the plotted region, in order of preference
// for the x and y axes: the transition's parameters (spec §5.3) and the raw layer inputs of a constraint mode.
var StabilityParams = []string{"beta", "eta", "alpha", "mu", "a", "b", "m", "e", "A_log", "Mu_log", "log_factor", "min_log_mu"}

// Region categories, worst first.
var regionColors = []color.Color{rgb(0xD5, 0x5E, 0x00), rgb(0xE6, 0xC2, 0x4C), rgb(0x00, 0x9E, 0x73)}
var regionNames = []string{"not Schur-stable (max|λ| ≥ 1)", "Schur-stable, tr T ≤ 0", "Schur-stable, tr T > 0 (right half)"}

func (b *plotBuilder) stability(rows []Row) ([]*Figure, error) {
	var sub []Row
	for _, r := range rows {
		if _, ok := r.Get("schur_stable"); ok {
			sub = append(sub, r)
		}
	}
	if len(sub) == 0 {
		return nil, notApplicable{"no row has schur_stable"}
	}
	type pv struct {
		key string
		n   int
	}
	var vary []pv
	for _, k := range StabilityParams {
		if !hasNumeric(sub, k) {
			continue
		}
		if n := len(distinct(sub, k)); n > 1 {
			vary = append(vary, pv{k, n})
		}
	}
	if len(vary) < 2 {
		var names []string
		for _, v := range vary {
			names = append(names, v.key)
		}
		return nil, fmt.Errorf("a stability region needs two varying parameters among %s; varying: %s", strings.Join(StabilityParams, ", "), strings.Join(append(names, "(none)")[:max(1, len(names))], ", "))
	}
	// the two parameters with the most values span the region; the others split figures
	sort.SliceStable(vary, func(i, j int) bool { return vary[i].n > vary[j].n })
	xk, yk := vary[0].key, vary[1].key
	if indexOf(StabilityParams, yk) < indexOf(StabilityParams, xk) {
		xk, yk = yk, xk
	}
	var facetKeys []string
	for _, v := range vary[2:] {
		facetKeys = append(facetKeys, v.key)
	}
	for _, k := range []string{"rho", "rho_mode", "mode", "constraint"} {
		if hasField(sub, k) && len(distinct(sub, k)) > 1 {
			facetKeys = append(facetKeys, k)
		}
	}
	groupKeys := b.groupKeys(sub)
	allFacet := append(append([]string{}, groupKeys...), facetKeys...)
	parts := map[string][]Row{}
	var order []string
	for _, r := range sub {
		k := joinKey(values(r, allFacet))
		if _, ok := parts[k]; !ok {
			order = append(order, k)
		}
		parts[k] = append(parts[k], r)
	}
	sort.Slice(order, func(i, j int) bool { return lessKey(splitKey(order[i]), splitKey(order[j])) })
	fixed := fixedParams(sub, xk, yk, facetKeys)
	var figs []*Figure
	for _, pk := range order {
		g := newRegionGrid(parts[pk], xk, yk)
		if len(g.xs) < 2 || len(g.ys) < 2 {
			continue
		}
		title := "Stability region of the momentum transition (spec §5.3)"
		desc := facetTitle(allFacet, splitKey(pk), nil, groupKeys)
		if fixed != "" {
			desc = strings.TrimPrefix(desc+" · "+fixed, " · ")
		}
		if desc != "" {
			title += "\n" + desc
		}
		p, leg := newPlot(title, axisLabel(xk), axisLabel(yk))
		hm := plotter.NewHeatMap(g, categorical{})
		hm.NaN = color.Transparent
		hm.Min, hm.Max = 0, 2
		p.Add(hm)
		for i, n := range regionNames {
			leg.Add(fmt.Sprintf("%s: %d points", n, g.count[i]), swatch{regionColors[i]})
		}
		if len(g.osc) > 0 {
			sc, err := plotter.NewScatter(g.osc)
			if err != nil {
				return nil, err
			}
			sc.GlyphStyle.Shape = draw.CircleGlyph{}
			sc.GlyphStyle.Radius = vg.Points(1.2)
			sc.GlyphStyle.Color = rgb(0x20, 0x20, 0x20)
			p.Add(sc)
			leg.Add("oscillatory (complex λ)", sc)
		}
		p.X.Tick.Marker = compactTicks{plot.DefaultTicks{}}
		p.Y.Tick.Marker = compactTicks{plot.DefaultTicks{}}
		name := "stability_" + slug(xk+"-"+yk)
		for i, k := range allFacet {
			if len(distinct(sub, k)) > 1 {
				name += "_" + slug(k+"-"+splitKey(pk)[i])
			}
		}
		fig := &Figure{Kind: "stability", Name: name, Title: strings.ReplaceAll(title, "\n", " — "), Plot: p, Legend: leg}
		if g.conflicts > 0 {
			fig.Notes = append(fig.Notes, fmt.Sprintf("%d grid cells hold several points that disagree; drawn as the least stable", g.conflicts))
		}
		figs = append(figs, fig)
	}
	return figs, nil
}

// fixedParams describes the stability parameters held constant ("alpha=0.9").
func fixedParams(rows []Row, xk, yk string, facet []string) string {
	var parts []string
	for _, k := range append(StabilityParams, "rho", "rho_mode") {
		if k == xk || k == yk || contains(facet, k) || !hasField(rows, k) {
			continue
		}
		if d := distinct(rows, k); len(d) == 1 && d[0] != "" {
			parts = append(parts, k+"="+d[0])
		}
	}
	return strings.Join(parts, " · ")
}

// regionGrid is the stability category (0 unstable, 1 stable with tr ≤ 0, 2 stable with tr > 0) on the grid of
// distinct x and y values; NaN where the grid has no point.
type regionGrid struct {
	xs, ys    []float64
	z         [][]float64
	osc       plotter.XYs
	count     [3]int
	conflicts int
}

func newRegionGrid(rows []Row, xk, yk string) *regionGrid {
	var xv, yv []float64
	for _, r := range rows {
		x, _ := r.Num(xk)
		y, _ := r.Num(yk)
		xv, yv = append(xv, x), append(yv, y)
	}
	g := &regionGrid{xs: uniqueSorted(xv), ys: uniqueSorted(yv)}
	g.z = make([][]float64, len(g.ys))
	for i := range g.z {
		g.z[i] = make([]float64, len(g.xs))
		for j := range g.z[i] {
			g.z[i][j] = math.NaN()
		}
	}
	for _, r := range rows {
		x, ok1 := r.Num(xk)
		y, ok2 := r.Num(yk)
		if !ok1 || !ok2 {
			continue
		}
		cat := 0.0
		if truthy(r, "schur_stable") {
			cat = 1
			if truthy(r, "right_half") {
				cat = 2
			}
		}
		g.count[int(cat)]++
		i, j := sort.SearchFloat64s(g.ys, y), sort.SearchFloat64s(g.xs, x)
		if old := g.z[i][j]; !math.IsNaN(old) && old != cat {
			g.conflicts++
			cat = math.Min(old, cat)
		}
		g.z[i][j] = cat
		if truthy(r, "oscillatory") {
			g.osc = append(g.osc, plotter.XY{X: x, Y: y})
		}
	}
	return g
}

func truthy(r Row, k string) bool {
	v, ok := r.Get(k)
	if !ok {
		return false
	}
	switch x := v.(type) {
	case bool:
		return x
	case float64:
		return x != 0
	case string:
		return x == "true" || x == "True" || x == "1"
	}
	return false
}

func (g *regionGrid) Dims() (c, r int)   { return len(g.xs), len(g.ys) }
func (g *regionGrid) Z(c, r int) float64 { return g.z[r][c] }
func (g *regionGrid) X(c int) float64    { return g.xs[c] }
func (g *regionGrid) Y(r int) float64    { return g.ys[r] }

// categorical is a three-colour palette for the region categories.
type categorical struct{}

func (categorical) Colors() []color.Color { return regionColors }

var _ palette.Palette = categorical{}

// swatch is a legend thumbnail: a filled square.
type swatch struct{ c color.Color }

func (s swatch) Thumbnail(c *draw.Canvas) {
	c.SetColor(s.c)
	c.Fill(c.Rectangle.Path())
}
