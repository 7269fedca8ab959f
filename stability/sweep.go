package stability

import (
	"math"
)

// SweepOptions span the free inputs of a constraint mode (spec §5.3 step 5).
type SweepOptions struct {
	Mode     string
	Rho      Rho
	MinLogMu *float64 // nil: no clamp
	Range    float64  // a, b, m, e in [-Range, Range]
	N        int      // values per raw input
	NParams  int      // values per head parameter: A, Mu in [1e-3, 16], factor in [1e-3, 4] (log-spaced)
}

func linspace(lo, hi float64, n int) []float64 {
	if n <= 1 {
		return []float64{(lo + hi) / 2}
	}
	out := make([]float64, n)
	for i := range out {
		out[i] = lo + (hi-lo)*float64(i)/float64(n-1)
	}
	return out
}

// SweepMode analyses every combination of the raw inputs a, b, m, e (N values each) and the head
// parameters A_log, Mu_log, log_factor (NParams values each, log-spaced over their init ranges), with
// dt_bias = mu_bias = 0 (a bias only shifts a and m, which the grid covers).
func SweepMode(o SweepOptions) ([]Row, error) {
	if _, err := Compute(o.Mode, Raw{}); err != nil {
		return nil, err
	}
	xs := linspace(-o.Range, o.Range, o.N)
	aLogs := linspace(math.Log(1e-3), math.Log(16), o.NParams)
	fLogs := linspace(math.Log(1e-3), math.Log(4), o.NParams)
	if o.Mode != "trig" {
		fLogs = []float64{0} // log_factor is read by trig only
	}
	var rows []Row
	for _, al := range aLogs {
		for _, ml := range aLogs {
			for _, lf := range fLogs {
				for _, a := range xs {
					for _, b := range xs {
						for _, m := range xs {
							for _, e := range xs {
								raw := Raw{A: a, B: b, M: m, E: e, ALog: al, MuLog: ml, LogFactor: lf, MinLogMu: o.MinLogMu,
									UsePTimesAlpha: o.Rho == RhoAlpha}
								g, _ := Compute(o.Mode, raw)
								row := NewRow(g.Point(o.Rho))
								row.Raw, row.Mode = &raw, o.Mode
								rows = append(rows, row)
							}
						}
					}
				}
			}
		}
	}
	return rows, nil
}
