// Package stability implements the stability-region checker of spec §5.3: the 2x2 transition of the momentum
// delta rule along one key direction,
//
//	[s_t; m_t] = T [s_{t-1}; m_{t-1}] + ...,   T = [[α − βηρ, −βμ], [ηρ, μ]],
//	tr T = α + μ − βηρ,   det T = αμ,
//
// with ρ = α (use_p_times_alpha, the default) or ρ = 1. It reports the eigenvalues, Schur stability (|λ| < 1),
// the right-half-plane condition tr T > 0 and oscillation (complex eigenvalues); over grids of (α, β, η, μ), over
// the raw layer inputs of a gating-constraint mode, and as a region plot.
package stability

import (
	"fmt"
	"math"
	"math/cmplx"
)

// Rho selects the read-key scale ρ: α (use_p_times_alpha) or 1.
type Rho int

const (
	RhoAlpha Rho = iota
	RhoOne
)

func (r Rho) String() string {
	if r == RhoOne {
		return "one"
	}
	return "alpha"
}

// ParseRho reads "alpha" or "one".
func ParseRho(s string) (Rho, error) {
	switch s {
	case "alpha", "":
		return RhoAlpha, nil
	case "one", "1":
		return RhoOne, nil
	}
	return 0, fmt.Errorf("--rho %q: expected alpha or one", s)
}

// Point is one set of gates.
type Point struct {
	Alpha, Beta, Eta, Mu float64
	Rho                  Rho
}

// Result is the analysis of one point (spec §5.3 steps 1-3).
type Result struct {
	Eigenvalues    [2]complex128 // larger real part first; for a complex pair, positive imaginary part first
	SpectralRadius float64       // max |λ|
	SchurStable    bool          // max |λ| < 1
	RightHalf      bool          // tr T > 0 (both eigenvalues in the right half-plane, as det T = αμ > 0)
	Oscillatory    bool          // tr² < 4 det: a complex-conjugate pair
	Trace          float64       // tr T, the quadrant margin
	Det            float64       // det T = αμ
}

// Validate checks the point is in the domain of the analysis: α, μ in [0, 1], β, η >= 0, all finite.
func (p Point) Validate() error {
	for _, f := range []struct {
		name   string
		v      float64
		lo, hi float64
	}{{"alpha", p.Alpha, 0, 1}, {"beta", p.Beta, 0, math.Inf(1)}, {"eta", p.Eta, 0, math.Inf(1)}, {"mu", p.Mu, 0, 1}} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < f.lo || f.v > f.hi {
			if math.IsInf(f.hi, 1) {
				return fmt.Errorf("%s = %v: expected a finite number >= %g", f.name, f.v, f.lo)
			}
			return fmt.Errorf("%s = %v: expected a number in [%g, %g]", f.name, f.v, f.lo, f.hi)
		}
	}
	return nil
}

// Transition is the 2x2 matrix T (row-major).
func (p Point) Transition() [2][2]float64 {
	rho := p.rho()
	return [2][2]float64{{p.Alpha - p.Beta*p.Eta*rho, -p.Beta * p.Mu}, {p.Eta * rho, p.Mu}}
}

func (p Point) rho() float64 {
	if p.Rho == RhoOne {
		return 1
	}
	return p.Alpha
}

// Analyze computes the eigenvalues of T in closed form and the flags of spec §5.3.
func Analyze(p Point) Result {
	tr := p.Alpha + p.Mu - p.Beta*p.Eta*p.rho()
	det := p.Alpha * p.Mu
	disc := tr*tr - 4*det
	var l1, l2 complex128
	if disc >= 0 {
		// the larger-magnitude root without cancellation, the other from the product of the roots
		s := math.Sqrt(disc)
		big := (tr + math.Copysign(s, tr)) / 2
		small := 0.0
		if big != 0 {
			small = det / big
		}
		a, b := big, small
		if b > a {
			a, b = b, a
		}
		l1, l2 = complex(a, 0), complex(b, 0)
	} else {
		im := math.Sqrt(-disc) / 2
		l1, l2 = complex(tr/2, im), complex(tr/2, -im)
	}
	r := math.Max(cmplx.Abs(l1), cmplx.Abs(l2))
	return Result{Eigenvalues: [2]complex128{l1, l2}, SpectralRadius: r, SchurStable: r < 1, RightHalf: tr > 0,
		Oscillatory: disc < 0, Trace: tr, Det: det}
}

// PointJSON is the exact output of `mdnctl stability ... --json` for one point.
type PointJSON struct {
	Eigenvalues    [2][2]float64 `json:"eigenvalues"`
	SpectralRadius float64       `json:"spectral_radius"`
	SchurStable    bool          `json:"schur_stable"`
	RightHalf      bool          `json:"right_half"`
	Oscillatory    bool          `json:"oscillatory"`
}

// JSON returns the one-point JSON form.
func (r Result) JSON() PointJSON {
	return PointJSON{
		Eigenvalues: [2][2]float64{{real(r.Eigenvalues[0]), imag(r.Eigenvalues[0])},
			{real(r.Eigenvalues[1]), imag(r.Eigenvalues[1])}},
		SpectralRadius: r.SpectralRadius, SchurStable: r.SchurStable, RightHalf: r.RightHalf, Oscillatory: r.Oscillatory,
	}
}

// ChunkRisk applies the chunk-numerics checks of spec §5.3 step 4 to one sequence of gates: the largest
// Σ_{l=i+1}^{j} (log α_l − log μ_l) over i < j inside a chunk of `chunk` tokens, and whether it exceeds 88
// (fp32 overflow of the official factorisation) or 16 (precision loss).
func ChunkRisk(logAlpha, logMu []float64, chunk int) (maxGap float64, overflow, precision bool) {
	if chunk < 1 {
		chunk = 64
	}
	for c0 := 0; c0 < len(logAlpha); c0 += chunk {
		end := min(c0+chunk, len(logAlpha))
		// max over i < j of S_j - S_i with S the running sum of the gap inside the chunk (max subarray, ≥ 1 term)
		run, best := 0.0, math.Inf(-1)
		for l := c0 + 1; l < end; l++ {
			g := logAlpha[l] - logMu[l]
			run = math.Max(g, run+g)
			best = math.Max(best, run)
		}
		if best > maxGap {
			maxGap = best
		}
	}
	return maxGap, maxGap > 88, maxGap > 16
}
