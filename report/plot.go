package report

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Figure is one plot, ready to save as PNG or SVG. Its legend sits to the right of the data, never on it.
type Figure struct {
	Kind   string       `json:"kind"`
	Name   string       `json:"name"`  // file name without extension
	Title  string       `json:"title"` // also drawn on the plot
	Notes  []string     `json:"notes,omitempty"`
	Files  []string     `json:"files,omitempty"`
	Series []Series     `json:"series,omitempty"` // the data drawn
	Plot   *plot.Plot   `json:"-"`
	Legend *plot.Legend `json:"-"`
}

// Figure size and resolution.
var (
	FigureWidth  = 7 * vg.Inch
	FigureHeight = 4.2 * vg.Inch
	FigureDPI    = 144
)

// Okabe–Ito colours (distinguishable with colour-blindness), then greys.
var colors8 = []color.Color{
	rgb(0x00, 0x72, 0xB2), rgb(0xD5, 0x5E, 0x00), rgb(0x00, 0x9E, 0x73), rgb(0xCC, 0x79, 0xA7),
	rgb(0xE6, 0x9F, 0x00), rgb(0x56, 0xB4, 0xE9), rgb(0x00, 0x00, 0x00), rgb(0x99, 0x99, 0x99),
}

func rgb(r, g, b uint8) color.Color { return color.RGBA{R: r, G: g, B: b, A: 255} }

var glyphs = []draw.GlyphDrawer{
	draw.CircleGlyph{}, draw.SquareGlyph{}, draw.TriangleGlyph{}, draw.PlusGlyph{}, draw.CrossGlyph{},
	draw.RingGlyph{}, draw.BoxGlyph{}, draw.PyramidGlyph{},
}

func newPlot(title, xlabel, ylabel string) (*plot.Plot, *plot.Legend) {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(11)
	p.X.Label.Text = xlabel
	p.Y.Label.Text = ylabel
	p.X.Label.TextStyle.Font.Size = vg.Points(10)
	p.Y.Label.TextStyle.Font.Size = vg.Points(10)
	p.Add(plotter.NewGrid())
	l := plot.NewLegend()
	l.Top, l.Left = true, true
	l.TextStyle.Font.Size = vg.Points(9)
	return p, &l
}

// draw renders the plot with its legend in a strip on the right.
func (f *Figure) draw(c draw.Canvas) {
	c.SetColor(color.White)
	c.Fill(c.Rectangle.Path())
	lw := vg.Length(0)
	if f.Legend != nil {
		if r := f.Legend.Rectangle(c); r.Size().X > 0 {
			lw = r.Size().X + 0.25*vg.Inch
		}
	}
	if lw == 0 {
		f.Plot.Draw(c)
		return
	}
	// The title goes over the whole width: centred over the plot area alone (narrowed by a wide legend) its long
	// lines were cut off at the left edge.
	title := f.Plot.Title.Text
	top := vg.Length(0)
	if title != "" {
		top = f.Plot.Title.TextStyle.Rectangle(title).Size().Y + f.Plot.Title.Padding
		c.FillText(f.Plot.Title.TextStyle, vg.Point{X: c.Center().X, Y: c.Max.Y}, title)
	}
	f.Plot.Title.Text = ""
	f.Plot.Draw(draw.Crop(c, 0, -lw, 0, -top))
	f.Plot.Title.Text = title
	f.Legend.Draw(draw.Crop(c, c.Size().X-lw+0.15*vg.Inch, 0, 0, -(top + 0.1*vg.Inch)))
}

// PNG renders the figure as PNG bytes.
func (f *Figure) PNG() ([]byte, error) {
	cv := vgimg.NewWith(vgimg.UseWH(FigureWidth, FigureHeight), vgimg.UseDPI(FigureDPI))
	f.draw(draw.New(cv))
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: cv}).WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("rendering %s as PNG: %w", f.Name, err)
	}
	return buf.Bytes(), nil
}

// SVG renders the figure as SVG bytes.
func (f *Figure) SVG() ([]byte, error) {
	cv := vgsvg.New(FigureWidth, FigureHeight)
	f.draw(draw.New(cv))
	var buf bytes.Buffer
	if _, err := cv.WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("rendering %s as SVG: %w", f.Name, err)
	}
	return buf.Bytes(), nil
}

// Save writes DIR/<name>.png and DIR/<name>.svg (or the formats given) and records the paths in Files.
func (f *Figure) Save(dir string, formats ...string) error {
	if len(formats) == 0 {
		formats = []string{"png", "svg"}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, ext := range formats {
		var b []byte
		var err error
		switch ext {
		case "png":
			b, err = f.PNG()
		case "svg":
			b, err = f.SVG()
		default:
			return fmt.Errorf("unknown plot format %q (expected png or svg)", ext)
		}
		if err != nil {
			return err
		}
		path := filepath.Join(dir, f.Name+"."+ext)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return err
		}
		f.Files = append(f.Files, path)
	}
	return nil
}

// --- series data ----------------------------------------------------------------------------------------

type point struct {
	x, y, lo, hi float64
	err          bool
}

type series struct {
	label string
	pts   []point
}

// Series is the data of one drawn line, sorted by x; Lo/Hi are set where an error bar is drawn.
type Series struct {
	Label  string      `json:"label"`
	Points []DataPoint `json:"points"`
}

// DataPoint is one drawn point.
type DataPoint struct {
	X  float64  `json:"x"`
	Y  float64  `json:"y"`
	Lo *float64 `json:"lo,omitempty"`
	Hi *float64 `json:"hi,omitempty"`
}

func exportSeries(ss []series) []Series {
	var out []Series
	for _, s := range ss {
		e := Series{Label: s.label}
		for _, p := range s.pts {
			dp := DataPoint{X: p.x, Y: p.y}
			if p.err {
				lo, hi := p.lo, p.hi
				dp.Lo, dp.Hi = &lo, &hi
			}
			e.Points = append(e.Points, dp)
		}
		out = append(out, e)
	}
	return out
}

// addLines adds one line with markers (and error bars where known) per series.
func addLines(p *plot.Plot, l *plot.Legend, ss []series, colors map[string]int, markers bool) error {
	for _, s := range ss {
		sort.Slice(s.pts, func(i, j int) bool { return s.pts[i].x < s.pts[j].x })
		xys := make(plotter.XYs, len(s.pts))
		for i, pt := range s.pts {
			xys[i] = plotter.XY{X: pt.x, Y: pt.y}
		}
		ci := colorIndex(colors, s.label)
		col := colors8[ci%len(colors8)]
		line, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("series %s: %w", s.label, err)
		}
		line.Color = col
		line.Width = vg.Points(1.6)
		if ci >= len(colors8) {
			line.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		}
		p.Add(line)
		thumbs := []plot.Thumbnailer{line}
		if markers {
			sc, err := plotter.NewScatter(xys)
			if err != nil {
				return err
			}
			sc.GlyphStyle.Color = col
			sc.GlyphStyle.Shape = glyphs[ci%len(glyphs)]
			sc.GlyphStyle.Radius = vg.Points(3)
			p.Add(sc)
			thumbs = append(thumbs, sc)
		}
		var eb errPoints
		for _, pt := range s.pts {
			if pt.err {
				eb = append(eb, pt)
			}
		}
		if len(eb) > 0 {
			bars, err := plotter.NewYErrorBars(eb)
			if err != nil {
				return err
			}
			bars.Color = col
			bars.CapWidth = vg.Points(5)
			p.Add(bars)
		}
		l.Add(s.label, thumbs...)
	}
	return nil
}

// errPoints adapts points to gonum's XYer and YErrorer.
type errPoints []point

func (e errPoints) Len() int                    { return len(e) }
func (e errPoints) XY(i int) (float64, float64) { return e[i].x, e[i].y }
func (e errPoints) YError(i int) (float64, float64) {
	return math.Max(0, e[i].y-e[i].lo), math.Max(0, e[i].hi-e[i].y)
}

func colorIndex(colors map[string]int, label string) int {
	if i, ok := colors[label]; ok {
		return i
	}
	i := len(colors)
	colors[label] = i
	return i
}

// --- axes -----------------------------------------------------------------------------------------------

// useLog says whether values call for a log axis: positive, spanning at least a decade, or at least 4× when
// every value is a power of two (sequence lengths, chunk sizes, widths).
func useLog(vals []float64) bool {
	if len(vals) < 2 {
		return false
	}
	lo, hi := minMax(vals)
	if lo <= 0 {
		return false
	}
	if hi/lo >= 10 {
		return true
	}
	for _, v := range vals {
		if v != math.Exp2(math.Round(math.Log2(v))) {
			return false
		}
	}
	return hi/lo >= 4
}

// setXAxis chooses the scale and ticks for x: a log scale when the data spans decades; ticks at the data
// values when there are few of them (sequence lengths, chunk sizes), else default ticks with compact labels.
func setXAxis(a *plot.Axis, xs []float64) {
	d := uniqueSorted(xs)
	log := useLog(d)
	if log {
		a.Scale = plot.LogScale{}
	}
	if len(d) > 0 && len(d) <= 10 {
		var ticks plot.ConstantTicks
		for _, v := range d {
			ticks = append(ticks, plot.Tick{Value: v, Label: FormatValue(v)})
		}
		a.Tick.Marker = ticks
		if log {
			a.Min, a.Max = d[0]/1.15, d[len(d)-1]*1.15
		} else if len(d) > 1 {
			pad := (d[len(d)-1] - d[0]) * 0.05
			a.Min, a.Max = d[0]-pad, d[len(d)-1]+pad
		}
		return
	}
	if log {
		a.Tick.Marker = compactTicks{plot.LogTicks{Prec: -1}}
	} else {
		a.Tick.Marker = compactTicks{plot.DefaultTicks{}}
	}
}

// setYAxis picks a log scale for y when values span a decade or more.
func setYAxis(a *plot.Axis, ys []float64) {
	if useLog(uniqueSorted(ys)) {
		a.Scale = plot.LogScale{}
		a.Tick.Marker = compactTicks{plot.LogTicks{Prec: -1}}
		return
	}
	a.Tick.Marker = compactTicks{plot.DefaultTicks{}}
}

// compactTicks relabels ticks with FormatNumber ("1.5M" rather than "1.5e+06").
type compactTicks struct{ plot.Ticker }

func (c compactTicks) Ticks(min, max float64) []plot.Tick {
	ts := c.Ticker.Ticks(min, max)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = FormatNumber(ts[i].Value)
		}
	}
	return ts
}

func uniqueSorted(xs []float64) []float64 {
	c := append([]float64(nil), xs...)
	sort.Float64s(c)
	out := c[:0]
	for i, v := range c {
		if i == 0 || v != c[i-1] {
			out = append(out, v)
		}
	}
	return out
}

var slugRE = regexp.MustCompile(`[^A-Za-z0-9.]+`)

func slug(s string) string {
	s = strings.Trim(slugRE.ReplaceAllString(s, "-"), "-")
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}
