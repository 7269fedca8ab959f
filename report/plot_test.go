package report

import (
	"bytes"
	"fmt"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gonum.org/v1/plot"
)

func figNames(figs []*Figure) string {
	var n []string
	for _, f := range figs {
		n = append(n, f.Name)
	}
	return strings.Join(n, ",")
}

func figByName(t *testing.T, figs []*Figure, name string) *Figure {
	t.Helper()
	for _, f := range figs {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("no figure %q among %s", name, figNames(figs))
	return nil
}

func seriesByLabel(t *testing.T, f *Figure, label string) Series {
	t.Helper()
	for _, s := range f.Series {
		if s.Label == label {
			return s
		}
	}
	t.Fatalf("figure %s has no series %q", f.Name, label)
	return Series{}
}

func TestPlotsPickKindsFromTheData(t *testing.T) {
	for dir, want := range map[string]string{
		"baselines": "throughput_tokens-per-s",
		"chunks":    "chunk_speedup", // one T only: no throughput line to draw
		"train":     "train_loss,train_tokens_per_s",
		"mqar":      "mqar_accuracy_seq-len-128_num-pairs-8,mqar_accuracy_seq-len-256_num-pairs-16,mqar_accuracy_seq-len-512_num-pairs-64",
		"stability": "stability_beta-eta_mu-0.5,stability_beta-eta_mu-0.9",
		"mixed":     "throughput_tokens-per-s_H100_2.11.0-cu128,throughput_tokens-per-s_H200_2.10.0-cu128",
		"sweep":     "throughput_tokens-per-s_mode-fwd,throughput_tokens-per-s_mode-fwdbwd", // not split by gpu index or mdnctl build
	} {
		figs, err := BuildPlots(load(t, "testdata/"+dir), PlotOptions{})
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if got := figNames(figs); got != want {
			t.Errorf("%s: figures %s, want %s", dir, got, want)
		}
	}
}

func TestThroughputPlot(t *testing.T) {
	figs, err := BuildPlots(load(t, "testdata/baselines"), PlotOptions{Kinds: []string{"throughput"}})
	if err != nil {
		t.Fatal(err)
	}
	f := figs[0]
	if _, ok := f.Plot.X.Scale.(plot.LogScale); !ok {
		t.Error("T from 1024 to 8192 (powers of two): log x axis")
	}
	if _, ok := f.Plot.Y.Scale.(plot.LogScale); ok {
		t.Error("throughputs within 2×: linear y axis")
	}
	if f.Plot.X.Label.Text != "sequence length T (tokens)" || !strings.Contains(f.Plot.Y.Label.Text, "tokens/s") {
		t.Errorf("axis labels with units: %q / %q", f.Plot.X.Label.Text, f.Plot.Y.Label.Text)
	}
	sdpa := seriesByLabel(t, f, "sdpa")
	if len(sdpa.Points) != 3 {
		t.Errorf("sdpa failed at 8192: 3 points, got %d", len(sdpa.Points))
	}
	if len(f.Notes) != 1 || !strings.Contains(f.Notes[0], "sdpa at T=8192: failed") || !strings.Contains(f.Notes[0], "kda at T=1024: unavailable") {
		t.Errorf("missing points are named: %q", f.Notes)
	}
	mdn := seriesByLabel(t, f, "mdn")
	if p := mdn.Points[2]; p.X != 4096 || p.Lo == nil || *p.Lo >= p.Y || *p.Hi <= p.Y {
		t.Errorf("three repeats at 4096 → median with a min–max bar: %+v", p)
	}
	_, err = BuildPlots(load(t, "testdata/train"), PlotOptions{Kinds: []string{"throughput"}})
	if err == nil || !strings.Contains(err.Error(), "no row has both op and T") {
		t.Errorf("an explicit kind the rows cannot support is an error: %v", err)
	}
	if _, err := BuildPlots(load(t, "testdata/train"), PlotOptions{Kinds: []string{"pie"}}); err == nil || !strings.Contains(err.Error(), "unknown plot kind") {
		t.Errorf("unknown kind: %v", err)
	}
}

func TestThroughputDerivedFromTime(t *testing.T) {
	var rows []Row
	for _, r := range load(t, "testdata/baselines") {
		delete(r, "tokens_per_s")
		rows = append(rows, r)
	}
	figs, err := BuildPlots(rows, PlotOptions{Kinds: []string{"throughput"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := figNames(figs); got != "throughput_fwd-tokens-per-s,throughput_fwdbwd-tokens-per-s" {
		t.Fatalf("one derived figure per time field: %s", got)
	}
	g := seriesByLabel(t, figs[1], "gdn")
	// B=4, T=1024, fwdbwd 2.175 ms
	if want := 4 * 1024 / 2.175e-3; math.Abs(g.Points[0].Y-want) > 1e-6*want {
		t.Fatalf("tokens/s = B·T/time: %v, want %v", g.Points[0].Y, want)
	}
	if !strings.Contains(figs[1].Plot.Y.Label.Text, "B·T / fwdbwd_ms") {
		t.Fatalf("a derived axis says how: %q", figs[1].Plot.Y.Label.Text)
	}
}

func TestChunkSpeedupPlot(t *testing.T) {
	figs, err := BuildPlots(load(t, "testdata/chunks"), PlotOptions{Kinds: []string{"chunk"}})
	if err != nil {
		t.Fatal(err)
	}
	f := figs[0]
	none := seriesByLabel(t, f, "none")
	want := map[float64]float64{16: 1 / 1.6, 32: 1 / 1.15, 64: 1, 128: 1 / 1.08}
	for _, p := range none.Points {
		if math.Abs(p.Y-want[p.X]) > 1e-3 {
			t.Errorf("speed-up at chunk %v: %v, want %v", p.X, p.Y, want[p.X])
		}
	}
	if trig := seriesByLabel(t, f, "trig"); len(trig.Points) != 3 {
		t.Errorf("trig/128 is incorrect and must not be drawn: %d points", len(trig.Points))
	}
	if !strings.Contains(f.Plot.Y.Label.Text, "chunk_size=64") {
		t.Errorf("y label names the reference: %q", f.Plot.Y.Label.Text)
	}
	figs, err = BuildPlots(load(t, "testdata/chunks"), PlotOptions{Kinds: []string{"chunk"}, ChunkRef: 32})
	if err != nil {
		t.Fatal(err)
	}
	if p := seriesByLabel(t, figs[0], "none").Points[1]; p.X != 32 || math.Abs(p.Y-1) > 1e-9 {
		t.Errorf("--chunk-ref 32: speed-up 1 at 32, got %+v", p)
	}
	if _, err := BuildPlots(load(t, "testdata/chunks"), PlotOptions{Kinds: []string{"chunk"}, ChunkRef: 48}); err == nil || !strings.Contains(err.Error(), "chunk sizes: 16, 32, 64, 128") {
		t.Errorf("a reference chunk size with no rows: %v", err)
	}
}

func TestTrainingAndMQARPlots(t *testing.T) {
	figs, err := BuildPlots(load(t, "testdata/train"), PlotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	loss := figs[0]
	if loss.Plot.X.Label.Text != "training tokens" || len(loss.Series) != 2 || len(loss.Series[0].Points) != 60 {
		t.Fatalf("loss vs tokens, one line of 60 steps per model: %q %d", loss.Plot.X.Label.Text, len(loss.Series))
	}
	tok := figs[1]
	if len(tok.Series) != 2 || tok.Series[0].Label != "gdn-tiny" {
		t.Fatalf("tokens/s bars per model: %+v", tok.Series)
	}
	// the first steps (warm-up at 0.3× speed) are dropped: the median is near the steady 56000
	if y := tok.Series[0].Points[0].Y; math.Abs(y-56000)/56000 > 0.03 {
		t.Fatalf("gdn-tiny tokens/s median %v, want ≈ 56000", y)
	}
	figs, err = BuildPlots(load(t, "testdata/mqar"), PlotOptions{Kinds: []string{"mqar"}})
	if err != nil {
		t.Fatal(err)
	}
	f := figs[2]
	if f.Plot.Y.Min != 0 || f.Plot.Y.Max < 1 {
		t.Errorf("accuracy axis spans 0..1: %v..%v", f.Plot.Y.Min, f.Plot.Y.Max)
	}
	var labels []string
	for _, s := range f.Series {
		labels = append(labels, s.Label)
	}
	if strings.Join(labels, ",") != "gdn,mdn / none,mdn / trig,transformer" {
		t.Errorf("one line per model and constraint: %v", labels)
	}
	for _, s := range f.Series {
		for _, p := range s.Points {
			if p.Lo != nil {
				t.Errorf("best over lr has no error bar: %+v", p)
			}
		}
	}
}

func TestStabilityPlot(t *testing.T) {
	figs, err := BuildPlots(load(t, "testdata/stability"), PlotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := figs[0]
	if f.Plot.X.Label.Text != "β (step size)" || f.Plot.Y.Label.Text != "η (gradient gain)" {
		t.Errorf("region axes: %q × %q", f.Plot.X.Label.Text, f.Plot.Y.Label.Text)
	}
	if !strings.Contains(f.Title, "alpha=0.9") || !strings.Contains(f.Title, "mu=0.5") {
		t.Errorf("the title names the fixed parameters: %q", f.Title)
	}
	// counts in the legend come from the data: 441 grid points per mu
	svg, err := f.SVG()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"not Schur-stable", "right half", "oscillatory"} {
		if !bytes.Contains(svg, []byte(s)) {
			t.Errorf("legend entry %q missing from the SVG", s)
		}
	}
	rows := []Row{{"alpha": 0.9, "beta": 0.5, "schur_stable": true}}
	if _, err := BuildPlots(rows, PlotOptions{Kinds: []string{"stability"}}); err == nil || !strings.Contains(err.Error(), "two varying parameters") {
		t.Errorf("a single point has no region: %v", err)
	}
}

func TestFigureFiles(t *testing.T) {
	figs, err := BuildPlots(load(t, "testdata/baselines"), PlotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := figs[0].Save(dir); err != nil {
		t.Fatal(err)
	}
	if len(figs[0].Files) != 2 {
		t.Fatalf("PNG and SVG: %v", figs[0].Files)
	}
	b, err := os.ReadFile(filepath.Join(dir, "throughput_tokens-per-s.png"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if w, h := img.Bounds().Dx(), img.Bounds().Dy(); w != 1008 || h < 600 || h > 606 {
		t.Fatalf("7×4.2 in at 144 dpi: got %d×%d", w, h)
	}
	svg, err := os.ReadFile(filepath.Join(dir, "throughput_tokens-per-s.svg"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"<svg", "sequence length T (tokens)", "sdpa", "mamba2"} {
		if !bytes.Contains(svg, []byte(s)) {
			t.Errorf("SVG lacks %q", s)
		}
	}
}

func TestUseLog(t *testing.T) {
	for _, c := range []struct {
		vals []float64
		want bool
	}{
		{[]float64{1024, 2048, 4096, 8192}, true},
		{[]float64{64, 128, 256}, true},
		{[]float64{64, 128}, false},
		{[]float64{1, 2, 5, 10}, true},
		{[]float64{2.2, 5.6}, false},
		{[]float64{0, 10, 1000}, false},
		{[]float64{3}, false},
	} {
		if got := useLog(c.vals); got != c.want {
			t.Errorf("useLog(%v) = %v, want %v", c.vals, got, c.want)
		}
	}
}

// MQAR sweep rows carry their last step and loss; they are one row per grid point, not a training curve, and
// must not be joined into a "training loss" line (it happened with the H100 MQAR rows of 2026-11-27).
func TestSweepPointRowsAreNoTrainingCurve(t *testing.T) {
	dir := t.TempDir()
	var b strings.Builder
	n := 0
	for _, d := range []string{"64", "128"} {
		for _, lr := range []string{"0.0001", "0.001", "0.01"} {
			n++
			b.WriteString(fmt.Sprintf(`{"point": "p%d", "status": "ok", "task": "mqar", "model": "mdn", "constraint": "trig", `+
				`"d_model": %s, "seq_len": 128, "num_pairs": 8, "lr": %s, "accuracy": 0.5, "step": %d, "loss": 8.4, `+
				`"tokens_per_s": 1000, "device": "NVIDIA H100 80GB HBM3"}`+"\n", n, d, lr, 10*n))
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "results.jsonl"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	figs, err := BuildPlots(load(t, dir), PlotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := figNames(figs); got != "mqar_accuracy" {
		t.Errorf("figures %s, want only the MQAR accuracy figure", got)
	}
	if _, err := BuildPlots(load(t, dir), PlotOptions{Kinds: []string{"loss"}}); err == nil || !strings.Contains(err.Error(), "no row has step and loss") {
		t.Errorf("asked for the loss figure explicitly: want a clear error, got %v", err)
	}
}

func TestCountDuplicatesFoldsRepeatedNotes(t *testing.T) {
	got := countDuplicates([]string{"b: failed", "a: timeout", "b: failed", "b: failed"})
	if strings.Join(got, "; ") != "a: timeout; b: failed (×3 rows)" {
		t.Errorf("got %q", got)
	}
}
