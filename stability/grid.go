package stability

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseAxis reads an axis: a number, a comma list ("0.1,0.5,0.9"), or start:stop:n (n evenly spaced values,
// both ends included; "0:1:11"). name is used in errors.
func ParseAxis(name, s string) ([]float64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("--%s is empty", name)
	}
	if strings.Contains(s, ":") {
		parts := strings.Split(s, ":")
		if len(parts) != 3 {
			return nil, fmt.Errorf("--%s %q: expected start:stop:n", name, s)
		}
		lo, err1 := strconv.ParseFloat(parts[0], 64)
		hi, err2 := strconv.ParseFloat(parts[1], 64)
		n, err3 := strconv.Atoi(parts[2])
		if err1 != nil || err2 != nil || err3 != nil || n < 1 || n > 100000 {
			return nil, fmt.Errorf("--%s %q: expected start:stop:n with numbers and 1 <= n <= 100000", name, s)
		}
		if n == 1 {
			return []float64{lo}, nil
		}
		out := make([]float64, n)
		for i := range out {
			out[i] = lo + (hi-lo)*float64(i)/float64(n-1)
		}
		return out, nil
	}
	var out []float64
	for _, p := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return nil, fmt.Errorf("--%s %q: %q is not a number", name, s, p)
		}
		out = append(out, v)
	}
	return out, nil
}

// Row is one analysed point as written to CSV/JSONL (the fields `mdnctl report` plots, docs/report.md).
type Row struct {
	Alpha, Beta, Eta, Mu float64
	Rho                  Rho
	Result
	ChunkGap                    float64 // 63 * max(0, log α − log μ): constant gates over a 64-token chunk
	OverflowRisk, PrecisionRisk bool
	Raw                         *Raw   // the layer inputs, for a mode sweep
	Mode                        string // the constraint mode, for a mode sweep
}

// NewRow analyses one point.
func NewRow(p Point) Row {
	r := Row{Alpha: p.Alpha, Beta: p.Beta, Eta: p.Eta, Mu: p.Mu, Rho: p.Rho, Result: Analyze(p)}
	if p.Alpha > 0 && p.Mu > 0 {
		r.ChunkGap = 63 * math.Max(0, math.Log(p.Alpha)-math.Log(p.Mu))
	} else if p.Mu == 0 && p.Alpha > 0 {
		r.ChunkGap = math.Inf(1)
	}
	r.OverflowRisk, r.PrecisionRisk = r.ChunkGap > 88, r.ChunkGap > 16
	return r
}

// Grid analyses every combination of the axes (α slowest, μ fastest).
func Grid(alpha, beta, eta, mu []float64, rho Rho) ([]Row, error) {
	var rows []Row
	for _, a := range alpha {
		for _, b := range beta {
			for _, e := range eta {
				for _, m := range mu {
					p := Point{Alpha: a, Beta: b, Eta: e, Mu: m, Rho: rho}
					if err := p.Validate(); err != nil {
						return nil, err
					}
					rows = append(rows, NewRow(p))
				}
			}
		}
	}
	return rows, nil
}

// Fields are the columns of a row, in order.
var Fields = []string{"alpha", "beta", "eta", "mu", "rho", "schur_stable", "right_half", "oscillatory", "margin",
	"det", "spectral_radius", "eig1_re", "eig1_im", "eig2_re", "eig2_im", "chunk_gap", "overflow_risk",
	"precision_risk"}

// RawFields are the extra columns of a mode sweep.
var RawFields = []string{"mode", "a", "b", "m", "e", "A_log", "Mu_log", "log_factor", "min_log_mu"}

// Map returns the row's fields by name (numbers, bools and strings; the raw inputs when present).
func (r Row) Map() map[string]any {
	m := map[string]any{
		"alpha": r.Alpha, "beta": r.Beta, "eta": r.Eta, "mu": r.Mu, "rho": r.Rho.String(),
		"schur_stable": r.SchurStable, "right_half": r.RightHalf, "oscillatory": r.Oscillatory, "margin": r.Trace,
		"det": r.Det, "spectral_radius": r.SpectralRadius,
		"eig1_re": real(r.Eigenvalues[0]), "eig1_im": imag(r.Eigenvalues[0]),
		"eig2_re": real(r.Eigenvalues[1]), "eig2_im": imag(r.Eigenvalues[1]),
		"chunk_gap": r.ChunkGap, "overflow_risk": r.OverflowRisk, "precision_risk": r.PrecisionRisk,
	}
	if r.Raw != nil {
		m["mode"] = r.Mode
		m["a"], m["b"], m["m"], m["e"] = r.Raw.A, r.Raw.B, r.Raw.M, r.Raw.E
		m["A_log"], m["Mu_log"], m["log_factor"] = r.Raw.ALog, r.Raw.MuLog, r.Raw.LogFactor
		if r.Raw.MinLogMu != nil {
			m["min_log_mu"] = *r.Raw.MinLogMu
		} else {
			m["min_log_mu"] = "none"
		}
	}
	return m
}

// Summary counts the flags over rows and keeps the point with the smallest margin and the largest radius.
type Summary struct {
	Points        int     `json:"points"`
	SchurStable   int     `json:"schur_stable"`
	RightHalf     int     `json:"right_half"`
	Oscillatory   int     `json:"oscillatory"`
	OverflowRisk  int     `json:"overflow_risk"`
	PrecisionRisk int     `json:"precision_risk"`
	MinMargin     float64 `json:"min_margin"`
	MaxRadius     float64 `json:"max_spectral_radius"`
	WorstMargin   *Row    `json:"-"`
	WorstRadius   *Row    `json:"-"`
}

// Summarize counts rows.
func Summarize(rows []Row) Summary {
	s := Summary{Points: len(rows), MinMargin: math.Inf(1), MaxRadius: math.Inf(-1)}
	for i := range rows {
		r := &rows[i]
		if r.SchurStable {
			s.SchurStable++
		}
		if r.RightHalf {
			s.RightHalf++
		}
		if r.Oscillatory {
			s.Oscillatory++
		}
		if r.OverflowRisk {
			s.OverflowRisk++
		}
		if r.PrecisionRisk {
			s.PrecisionRisk++
		}
		if r.Trace < s.MinMargin {
			s.MinMargin, s.WorstMargin = r.Trace, r
		}
		if r.SpectralRadius > s.MaxRadius {
			s.MaxRadius, s.WorstRadius = r.SpectralRadius, r
		}
	}
	return s
}
