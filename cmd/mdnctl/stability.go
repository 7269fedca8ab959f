package main

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mdnctl/mdnctl/stability"
)

func init() { register(newStabilityCmd) }

// stabilityOptions: `mdnctl stability` (spec §5.3). Pure Go; no Python.
type stabilityOptions struct {
	g                    *globalOptions
	Alpha, Beta, Eta, Mu string
	Rho                  string
	Mode                 string
	MinLogMu             string
	Range                float64
	N, NParams           int
	Out, Plot            string
	MaxRows              int
}

func newStabilityCmd(g *globalOptions) *cobra.Command {
	o := &stabilityOptions{g: g}
	cmd := &cobra.Command{
		Use:   "stability",
		Short: "Eigenvalues and stability region of the momentum transition (spec §5.3), per point, grid or constraint mode",
		Long: `stability analyses the 2x2 transition of the momentum delta rule along one key direction,
T = [[α − βηρ, −βμ], [ηρ, μ]] with ρ = α (--rho alpha, the layer's default) or 1 (--rho one):
eigenvalues, spectral radius, Schur stability (|λ| < 1), the right-half-plane condition tr T = α + μ − βηρ > 0,
and oscillation (complex eigenvalues).

One point:  --alpha A --beta B --eta E --mu M (--json prints exactly
            {"eigenvalues": [[re, im], [re, im]], "spectral_radius": r, "schur_stable": b, "right_half": b,
             "oscillatory": b}).
A grid:     any of the four as a list (0.1,0.5) or a range start:stop:n; --plot FILE draws the region on the two
            axes with the most values; --out FILE.csv|.jsonl writes every row (mdnctl report plots it).
A mode:     --mode trig|clamp|none|quadrant sweeps the layer's raw inputs a, b, m, e over [-range, range] and the
            head parameters A_log, Mu_log, log_factor over their init ranges, through that gating constraint
            (--min-log-mu, "none" for no clamp), and reports how many points are stable / in the right half-plane.
Chunk columns: 63·max(0, log α − log μ), the official chunk factorisation's overflow (> 88) and precision
(> 16) risks for constant gates over a 64-token chunk.`,
		Example: `  mdnctl stability --alpha 0.9 --beta 0.1 --eta 1 --mu 0.5 --json
  mdnctl stability --alpha 0.02:1:50 --beta 0:2:50 --eta 1.5 --mu 0.37 --rho one --plot region.png
  mdnctl stability --mode trig --min-log-mu -2
  mdnctl stability --mode quadrant --rho one --min-log-mu none --out quadrant.csv`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return o.run() },
	}
	f := cmd.Flags()
	f.StringVar(&o.Alpha, "alpha", "", "α: a number, a list a,b,c or a range start:stop:n")
	f.StringVar(&o.Beta, "beta", "", "β (same forms)")
	f.StringVar(&o.Eta, "eta", "1", "η (same forms)")
	f.StringVar(&o.Mu, "mu", "", "μ (same forms)")
	f.StringVar(&o.Rho, "rho", "alpha", "read-key scale ρ: alpha (use_p_times_alpha) or one")
	f.StringVar(&o.Mode, "mode", "", "sweep the raw layer inputs through a gating constraint: trig, clamp, none or quadrant")
	f.StringVar(&o.MinLogMu, "min-log-mu", "-2", `--mode: the momentum clamp log μ >= this ("none": no clamp)`)
	f.Float64Var(&o.Range, "range", 6, "--mode: a, b, m, e span [-range, range]")
	f.IntVar(&o.N, "n", 9, "--mode: values per raw input")
	f.IntVar(&o.NParams, "n-params", 4, "--mode: values per head parameter")
	f.StringVar(&o.Out, "out", "", "write every row to FILE (.csv or .jsonl)")
	f.StringVar(&o.Plot, "plot", "", "grid: draw the region to FILE (.png, .svg or .pdf)")
	f.IntVar(&o.MaxRows, "max-rows", 40, "grid: print the rows as a table when there are at most this many")
	return cmd
}

func (o *stabilityOptions) run() error {
	rho, err := stability.ParseRho(o.Rho)
	if err != nil {
		return &userError{err.Error()}
	}
	if o.Out != "" && !strings.HasSuffix(o.Out, ".csv") && !strings.HasSuffix(o.Out, ".jsonl") {
		return userErrorf("--out %s: expected a .csv or .jsonl file", o.Out)
	}
	if o.Mode != "" {
		if o.Alpha != "" || o.Beta != "" || o.Mu != "" {
			return userErrorf("--mode sweeps the raw layer inputs: drop --alpha/--beta/--mu")
		}
		return o.runMode(rho)
	}
	var missing []string
	for _, x := range []struct{ name, v string }{{"alpha", o.Alpha}, {"beta", o.Beta}, {"mu", o.Mu}} {
		if x.v == "" {
			missing = append(missing, "--"+x.name)
		}
	}
	if len(missing) > 0 {
		return userErrorf("give %s (numbers, lists or ranges), or --mode to sweep a gating constraint", strings.Join(missing, ", "))
	}
	axes := map[string][]float64{}
	for _, x := range []struct{ name, v string }{{"alpha", o.Alpha}, {"beta", o.Beta}, {"eta", o.Eta}, {"mu", o.Mu}} {
		vals, err := stability.ParseAxis(x.name, x.v)
		if err != nil {
			return &userError{err.Error()}
		}
		axes[x.name] = vals
	}
	rows, err := stability.Grid(axes["alpha"], axes["beta"], axes["eta"], axes["mu"], rho)
	if err != nil {
		return &userError{err.Error()}
	}
	if err := o.writeRows(rows); err != nil {
		return err
	}
	if len(rows) == 1 {
		if o.Plot != "" {
			return userErrorf("--plot needs a grid: give two of --alpha/--beta/--eta/--mu several values")
		}
		return o.printPoint(rows[0])
	}
	if o.Plot != "" {
		if err := o.plot(rows, axes); err != nil {
			return err
		}
	}
	return o.printGrid(rows)
}

func (o *stabilityOptions) printPoint(r stability.Row) error {
	if o.g.JSON {
		return json.NewEncoder(o.g.Stdout).Encode(r.Result.JSON())
	}
	w := o.g.Stdout
	t := newTable(w)
	t.Header("α", "β", "η", "μ", "ρ", "λ1", "λ2", "|λ|max", "tr T", "det T", "Schur", "right half", "oscillatory")
	_ = t.Append(stabilityCells(r))
	if err := t.Render(); err != nil {
		return err
	}
	if r.Oscillatory {
		omega := math.Acos(r.Trace / (2 * math.Sqrt(r.Det)))
		fmt.Fprintf(w, "complex pair: |λ| = sqrt(αμ) = %.6g, rotation %.4g rad (%.1f°) per step\n", math.Sqrt(r.Det), omega, omega*180/math.Pi)
	}
	if r.PrecisionRisk {
		fmt.Fprintf(w, "chunk numerics: 63·(log α − log μ) = %.3g > 16 (precision%s) for the official factorisation\n",
			r.ChunkGap, map[bool]string{true: ", overflow > 88", false: ""}[r.OverflowRisk])
	}
	return nil
}

func fmtEig(c complex128) string {
	if imag(c) == 0 {
		return strconv.FormatFloat(real(c), 'g', 6, 64)
	}
	return fmt.Sprintf("%.6g%+.6gi", real(c), imag(c))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func stabilityCells(r stability.Row) []string {
	g := func(x float64) string { return strconv.FormatFloat(x, 'g', 6, 64) }
	return []string{g(r.Alpha), g(r.Beta), g(r.Eta), g(r.Mu), r.Rho.String(), fmtEig(r.Eigenvalues[0]), fmtEig(r.Eigenvalues[1]),
		g(r.SpectralRadius), g(r.Trace), g(r.Det), yesNo(r.SchurStable), yesNo(r.RightHalf), yesNo(r.Oscillatory)}
}

func summaryJSON(s stability.Summary) map[string]any {
	m := map[string]any{"points": s.Points, "schur_stable": s.SchurStable, "right_half": s.RightHalf,
		"oscillatory": s.Oscillatory, "overflow_risk": s.OverflowRisk, "precision_risk": s.PrecisionRisk,
		"min_margin": s.MinMargin, "max_spectral_radius": s.MaxRadius}
	if s.WorstMargin != nil {
		m["worst_margin_point"] = s.WorstMargin.Map()
	}
	if s.WorstRadius != nil {
		m["worst_radius_point"] = s.WorstRadius.Map()
	}
	return m
}

func (o *stabilityOptions) printGrid(rows []stability.Row) error {
	s := stability.Summarize(rows)
	if o.g.JSON {
		out := map[string]any{"summary": summaryJSON(s)}
		if len(rows) <= o.MaxRows {
			var rs []map[string]any
			for _, r := range rows {
				rs = append(rs, r.Map())
			}
			out["rows"] = rs
		}
		return json.NewEncoder(o.g.Stdout).Encode(out)
	}
	w := o.g.Stdout
	if len(rows) <= o.MaxRows {
		t := newTable(w)
		t.Header("α", "β", "η", "μ", "ρ", "λ1", "λ2", "|λ|max", "tr T", "det T", "Schur", "right half", "oscillatory")
		for _, r := range rows {
			_ = t.Append(stabilityCells(r))
		}
		if err := t.Render(); err != nil {
			return err
		}
	}
	printSummary(w, s)
	if len(rows) > o.MaxRows && o.Out == "" {
		fmt.Fprintf(w, "(%d rows; --out FILE.csv writes them all)\n", len(rows))
	}
	return nil
}

func printSummary(w io.Writer, s stability.Summary) {
	pct := func(n int) string { return fmt.Sprintf("%d (%.1f%%)", n, 100*float64(n)/float64(max(s.Points, 1))) }
	fmt.Fprintf(w, "points %d: Schur-stable %s, right half-plane %s, oscillatory %s; chunk precision risk %s, overflow risk %s\n",
		s.Points, pct(s.SchurStable), pct(s.RightHalf), pct(s.Oscillatory), pct(s.PrecisionRisk), pct(s.OverflowRisk))
	if s.WorstMargin != nil {
		fmt.Fprintf(w, "smallest tr T = %.4g at %s\n", s.MinMargin, describeRow(*s.WorstMargin))
	}
	if s.WorstRadius != nil {
		fmt.Fprintf(w, "largest |λ| = %.4g at %s\n", s.MaxRadius, describeRow(*s.WorstRadius))
	}
}

func describeRow(r stability.Row) string {
	s := fmt.Sprintf("α=%.4g β=%.4g η=%.4g μ=%.4g ρ=%s", r.Alpha, r.Beta, r.Eta, r.Mu, r.Rho)
	if r.Raw != nil {
		s += fmt.Sprintf(" (a=%.3g b=%.3g m=%.3g e=%.3g A_log=%.3g Mu_log=%.3g log_factor=%.3g)", r.Raw.A, r.Raw.B,
			r.Raw.M, r.Raw.E, r.Raw.ALog, r.Raw.MuLog, r.Raw.LogFactor)
	}
	return s
}

func (o *stabilityOptions) runMode(rho stability.Rho) error {
	var clamp *float64
	if o.MinLogMu != "none" {
		v, err := strconv.ParseFloat(o.MinLogMu, 64)
		if err != nil || v > 0 {
			return userErrorf(`--min-log-mu %q: expected a number <= 0 or "none"`, o.MinLogMu)
		}
		clamp = &v
	}
	if o.N < 1 || o.NParams < 1 || o.Range <= 0 || o.N > 40 || o.NParams > 12 {
		return userErrorf("--n %d, --n-params %d, --range %g: expected 1 <= n <= 40, 1 <= n-params <= 12, range > 0", o.N, o.NParams, o.Range)
	}
	if o.Plot != "" {
		return userErrorf("--plot draws --alpha/--beta/--eta/--mu grids; with --mode write --out FILE.csv and use mdnctl report")
	}
	rows, err := stability.SweepMode(stability.SweepOptions{Mode: o.Mode, Rho: rho, MinLogMu: clamp, Range: o.Range, N: o.N, NParams: o.NParams})
	if err != nil {
		return &userError{err.Error()}
	}
	if err := o.writeRows(rows); err != nil {
		return err
	}
	s := stability.Summarize(rows)
	if o.g.JSON {
		m := summaryJSON(s)
		m["mode"], m["rho"], m["min_log_mu"] = o.Mode, rho.String(), o.MinLogMu
		return json.NewEncoder(o.g.Stdout).Encode(m)
	}
	fmt.Fprintf(o.g.Stdout, "mode %s, ρ = %s, min_log_mu %s: a, b, m, e in [-%g, %g] (%d values each), A_log, Mu_log%s over their init ranges (%d each)\n",
		o.Mode, rho, o.MinLogMu, o.Range, o.Range, o.N, map[bool]string{true: ", log_factor", false: ""}[o.Mode == "trig"], o.NParams)
	printSummary(o.g.Stdout, s)
	if s.RightHalf == s.Points {
		fmt.Fprintln(o.g.Stdout, "every point has tr T > 0: both eigenvalues in the right half-plane (and Schur-stable)")
	}
	return nil
}

func (o *stabilityOptions) plot(rows []stability.Row, axes map[string][]float64) error {
	names := []string{"alpha", "beta", "eta", "mu"}
	var varying []string
	for _, n := range names {
		if len(axes[n]) > 1 {
			varying = append(varying, n)
		}
	}
	if len(varying) != 2 {
		return userErrorf("--plot draws two varying axes; %d vary (%s): give the others one value", len(varying), strings.Join(varying, ", "))
	}
	sort.SliceStable(varying, func(i, j int) bool { return len(axes[varying[i]]) > len(axes[varying[j]]) })
	var fixed []string
	for _, n := range names {
		if len(axes[n]) == 1 {
			fixed = append(fixed, fmt.Sprintf("%s=%g", n, axes[n][0]))
		}
	}
	title := fmt.Sprintf("stability region, ρ = %s, %s", rows[0].Rho, strings.Join(fixed, ", "))
	if err := stability.PlotRegion(rows, varying[0], varying[1], title, o.Plot); err != nil {
		return err
	}
	if !o.g.Quiet && !o.g.JSON {
		fmt.Fprintf(o.g.Stderr, "wrote %s\n", o.Plot)
	}
	return nil
}

// writeRows writes every row to --out (CSV with a header, or JSONL).
func (o *stabilityOptions) writeRows(rows []stability.Row) error {
	if o.Out == "" {
		return nil
	}
	if dir := filepath.Dir(o.Out); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	f, err := os.Create(o.Out)
	if err != nil {
		return fmt.Errorf("write rows: %w", err)
	}
	defer f.Close()
	fields := stability.Fields
	if len(rows) > 0 && rows[0].Raw != nil {
		fields = append(append([]string{}, stability.RawFields...), fields...)
	}
	if strings.HasSuffix(o.Out, ".jsonl") {
		enc := json.NewEncoder(f)
		for _, r := range rows {
			if err := enc.Encode(r.Map()); err != nil {
				return err
			}
		}
	} else {
		cw := csv.NewWriter(f)
		_ = cw.Write(fields)
		for _, r := range rows {
			m := r.Map()
			rec := make([]string, len(fields))
			for i, k := range fields {
				switch v := m[k].(type) {
				case float64:
					rec[i] = strconv.FormatFloat(v, 'g', -1, 64)
				default:
					rec[i] = fmt.Sprint(v)
				}
			}
			_ = cw.Write(rec)
		}
		cw.Flush()
		if err := cw.Error(); err != nil {
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if !o.g.Quiet && !o.g.JSON {
		fmt.Fprintf(o.g.Stderr, "wrote %d rows to %s\n", len(rows), o.Out)
	}
	return nil
}
