package stability

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Region classes, as in docs/report.md: not Schur-stable; Schur-stable with tr T <= 0 (negative real parts:
// sign flipping); Schur-stable with tr T > 0, oscillatory or real. Okabe-Ito colours.
var regionClasses = []struct {
	name  string
	color color.Color
	test  func(Row) bool
}{
	{"not Schur-stable (max |λ| ≥ 1)", color.RGBA{0xD5, 0x5E, 0x00, 0xFF}, func(r Row) bool { return !r.SchurStable }},
	{"stable, tr T ≤ 0 (left half-plane)", color.RGBA{0xE6, 0x9F, 0x00, 0xFF}, func(r Row) bool { return r.SchurStable && !r.RightHalf }},
	{"stable, tr T > 0, oscillatory", color.RGBA{0x56, 0xB4, 0xE9, 0xFF}, func(r Row) bool { return r.SchurStable && r.RightHalf && r.Oscillatory }},
	{"stable, tr T > 0, real", color.RGBA{0x00, 0x9E, 0x73, 0xFF}, func(r Row) bool { return r.SchurStable && r.RightHalf && !r.Oscillatory }},
}

func classOf(r Row) int {
	for i, c := range regionClasses {
		if c.test(r) {
			return i
		}
	}
	return 0
}

// AxisValue reads one of alpha, beta, eta, mu from a row.
func AxisValue(r Row, axis string) float64 {
	switch axis {
	case "alpha":
		return r.Alpha
	case "beta":
		return r.Beta
	case "eta":
		return r.Eta
	case "mu":
		return r.Mu
	}
	return math.NaN()
}

// regionGrid is the rows on a regular (x, y) grid, coloured by class (plotter.GridXYZ).
type regionGrid struct {
	xs, ys []float64
	cls    map[[2]int]int
}

func (g *regionGrid) Dims() (c, r int)   { return len(g.xs), len(g.ys) }
func (g *regionGrid) X(c int) float64    { return g.xs[c] }
func (g *regionGrid) Y(r int) float64    { return g.ys[r] }
func (g *regionGrid) Z(c, r int) float64 { return float64(g.cls[[2]int{c, r}]) }

type classPalette struct{}

func (classPalette) Colors() []color.Color {
	out := make([]color.Color, len(regionClasses))
	for i, c := range regionClasses {
		out[i] = c.color
	}
	return out
}

// swatch is a legend thumbnail: a filled square.
type swatch struct{ c color.Color }

func (s swatch) Thumbnail(c *draw.Canvas) {
	c.SetColor(s.c)
	c.Fill(c.Rectangle.Path())
}

func distinct(rows []Row, axis string) []float64 {
	seen := map[float64]bool{}
	var out []float64
	for _, r := range rows {
		if v := AxisValue(r, axis); !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Float64s(out)
	return out
}

// PlotRegion draws the rows (a grid over x and y, one value of the other parameters) as a region map, one
// colour per class with its count in the legend beside the plot, and saves it as .png or .svg.
func PlotRegion(rows []Row, x, y, title, path string) error {
	ext := strings.ToLower(filepath.Ext(path))
	if ext != ".png" && ext != ".svg" {
		return fmt.Errorf("--plot %s: expected a .png or .svg file", path)
	}
	g := &regionGrid{xs: distinct(rows, x), ys: distinct(rows, y), cls: map[[2]int]int{}}
	if len(g.xs) < 2 || len(g.ys) < 2 {
		return fmt.Errorf("plot: %s and %s need at least two values each", x, y)
	}
	xi, yi := map[float64]int{}, map[float64]int{}
	for i, v := range g.xs {
		xi[v] = i
	}
	for i, v := range g.ys {
		yi[v] = i
	}
	counts := make([]int, len(regionClasses))
	for _, r := range rows {
		k := classOf(r)
		g.cls[[2]int{xi[AxisValue(r, x)], yi[AxisValue(r, y)]}] = k
		counts[k]++
	}
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(11)
	p.X.Label.Text, p.Y.Label.Text = x, y
	hm := plotter.NewHeatMap(g, classPalette{})
	hm.Min, hm.Max = 0, float64(len(regionClasses)-1)
	p.Add(hm)
	legend := plot.NewLegend()
	legend.TextStyle.Font.Size = vg.Points(9)
	legend.Top, legend.Left = true, true
	for i := len(regionClasses) - 1; i >= 0; i-- {
		legend.Add(fmt.Sprintf("%s: %d", regionClasses[i].name, counts[i]), swatch{regionClasses[i].color})
	}
	width, height := 9*vg.Inch, 5*vg.Inch
	render := func(c draw.Canvas) {
		c.SetColor(color.White)
		c.Fill(c.Rectangle.Path())
		lw := legend.Rectangle(c).Size().X + 0.3*vg.Inch
		p.Draw(draw.Crop(c, 0, -lw, 0, 0))
		top := p.Title.TextStyle.Rectangle(p.Title.Text).Size().Y + p.Title.Padding + 0.1*vg.Inch
		legend.Draw(draw.Crop(c, c.Size().X-lw+0.15*vg.Inch, 0, 0, -top))
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("save plot: %w", err)
	}
	defer f.Close()
	if ext == ".svg" {
		cv := vgsvg.New(width, height)
		render(draw.New(cv))
		_, err = cv.WriteTo(f)
	} else {
		cv := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(120))
		render(draw.New(cv))
		_, err = vgimg.PngCanvas{Canvas: cv}.WriteTo(f)
	}
	if err != nil {
		return fmt.Errorf("save plot %s: %w", path, err)
	}
	return f.Close()
}
