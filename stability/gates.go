package stability

import (
	"fmt"
	"math"
)

// Modes are the gating-constraint modes of mdn.layers.gates (triton/mdn/layers/gates.py); the formulas here
// are the same, in float64 (a golden file written by the Python side keeps the two in step).
var Modes = []string{"trig", "clamp", "none", "quadrant"}

// Raw is one token's raw layer inputs and one head's parameters.
type Raw struct {
	A, B, M, E     float64 // a, b, m projections and e = (W_e x)/τ
	ALog, MuLog    float64 // A_log, Mu_log
	DtBias, MuBias float64
	LogFactor      float64  // trig only
	MinLogMu       *float64 // nil: no clamp
	UsePTimesAlpha bool     // ρ = α (true) or 1
}

// Gates are the op's inputs for one token and head.
type Gates struct {
	LogAlpha, Beta, LogMu, Eta float64
}

// softplus as torch computes it (the identity above 20).
func softplus(x float64) float64 {
	if x > 20 {
		return x
	}
	return math.Log1p(math.Exp(x))
}

func sigmoid(x float64) float64 {
	if x >= 0 {
		return 1 / (1 + math.Exp(-x))
	}
	e := math.Exp(x)
	return e / (1 + e)
}

func logSigmoid(x float64) float64 { return -softplus(-x) }

func logAddExp(a, b float64) float64 {
	if math.IsInf(a, -1) {
		return b
	}
	if math.IsInf(b, -1) {
		return a
	}
	m := math.Max(a, b)
	return m + math.Log1p(math.Exp(-math.Abs(a-b)))
}

// Compute applies a mode to raw inputs (see gates.py for the statements each mode guarantees).
func Compute(mode string, r Raw) (Gates, error) {
	logAlpha := -math.Exp(r.ALog) * softplus(r.A+r.DtBias)
	logMu := -math.Exp(r.MuLog) * softplus(r.M+r.MuBias)
	logEta := math.Ln2 + logSigmoid(2*r.E) // log(tanh(e) + 1)
	eta := 2 * sigmoid(2*r.E)
	beta := sigmoid(r.B)
	clamp := func() {
		if r.MinLogMu != nil && logMu < *r.MinLogMu {
			logMu = *r.MinLogMu
		}
	}
	switch mode {
	case "trig":
		logX2 := 2 * (logEta + r.LogFactor) // log tan²θ, tan θ = η·exp(log_factor)
		beta *= sigmoid(logX2)              // sin²θ
		logAlpha -= softplus(logX2)         // + log cos²θ
		clamp()
	case "clamp":
		clamp()
	case "none":
	case "quadrant":
		clamp()
		bound := logAddExp(logAlpha, logMu)
		if r.UsePTimesAlpha {
			bound -= logAlpha
		}
		beta *= math.Exp(math.Min(bound-logEta, 0))
	default:
		return Gates{}, fmt.Errorf("mode %q: expected one of trig, clamp, none, quadrant", mode)
	}
	return Gates{LogAlpha: logAlpha, Beta: beta, LogMu: logMu, Eta: eta}, nil
}

// Point turns gates into an analysis point.
func (g Gates) Point(rho Rho) Point {
	return Point{Alpha: math.Exp(g.LogAlpha), Beta: g.Beta, Eta: g.Eta, Mu: math.Exp(g.LogMu), Rho: rho}
}
