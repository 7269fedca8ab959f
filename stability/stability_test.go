package stability

import (
	"bytes"
	"encoding/json"
	"math"
	"math/cmplx"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol*math.Max(1, math.Abs(b)) }

func TestClosedFormCases(t *testing.T) {
	cases := []struct {
		name           string
		p              Point
		l1, l2         complex128
		stable, rh, os bool
	}{
		// β = 0: T is lower triangular, the eigenvalues are α and μ
		{"beta0", Point{Alpha: 0.9, Beta: 0, Eta: 1, Mu: 0.3}, 0.9, 0.3, true, true, false},
		// β = 0, α = μ: a double root (disc = 0), not oscillatory
		{"double", Point{Alpha: 0.5, Beta: 0, Eta: 1.7, Mu: 0.5}, 0.5, 0.5, true, true, false},
		// βηρ = α + μ: tr = 0, a pure rotation by 90° with |λ| = sqrt(αμ) = 0.81
		{"rotation", Point{Alpha: 0.81, Beta: 1.62 / (0.81 * 1.0), Eta: 1, Mu: 0.81}, complex(0, 0.81), complex(0, -0.81), true, false, true},
		// ρ = 1, βη = (1+α)(1+μ): one eigenvalue exactly −1 (the Jury boundary 1 + tr + αμ = 0)
		{"minus-one", Point{Alpha: 0.5, Beta: 2.25, Eta: 1, Mu: 0.5, Rho: RhoOne}, -0.25, -1, false, false, false},
		// μ = 0 (GDN): eigenvalues α(1 − βη) and 0
		{"gdn", Point{Alpha: 0.8, Beta: 0.5, Eta: 1.5, Mu: 0}, complex(0.8*(1-0.5*1.5), 0), 0, true, true, false},
		// α = μ = 1, no input: both eigenvalues 1, marginal (not Schur-stable)
		{"identity", Point{Alpha: 1, Beta: 0, Eta: 1, Mu: 1}, 1, 1, false, true, false},
	}
	for _, tc := range cases {
		r := Analyze(tc.p)
		for i, want := range []complex128{tc.l1, tc.l2} {
			if cmplx.Abs(r.Eigenvalues[i]-want) > 1e-12 {
				t.Errorf("%s: λ%d = %v, want %v", tc.name, i+1, r.Eigenvalues[i], want)
			}
		}
		if r.SchurStable != tc.stable || r.RightHalf != tc.rh || r.Oscillatory != tc.os {
			t.Errorf("%s: stable %v right_half %v oscillatory %v; want %v %v %v", tc.name, r.SchurStable, r.RightHalf,
				r.Oscillatory, tc.stable, tc.rh, tc.os)
		}
	}
}

func randPoint(rng *rand.Rand) Point {
	p := Point{Alpha: rng.Float64(), Beta: 3 * rng.Float64(), Eta: 2 * rng.Float64(), Mu: rng.Float64(), Rho: Rho(rng.Intn(2))}
	if rng.Intn(4) == 0 {
		p.Beta = 0
	}
	return p
}

// Independent checks on random points: the eigenvalues are the roots of det(T − λI) for the matrix itself,
// the spectral radius is what power iteration on T measures, Schur stability is Jury's test, the complex
// case has |λ| = sqrt(αμ), and right_half is Re λ > 0 for both.
func TestAgainstTheMatrix(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 5000; i++ {
		p := randPoint(rng)
		r := Analyze(p)
		T := p.Transition()
		for _, l := range r.Eigenvalues {
			d := (complex(T[0][0], 0)-l)*(complex(T[1][1], 0)-l) - complex(T[0][1]*T[1][0], 0)
			if cmplx.Abs(d) > 1e-9 {
				t.Fatalf("%+v: det(T − λI) = %v at λ = %v", p, d, l)
			}
		}
		sum, prod := r.Eigenvalues[0]+r.Eigenvalues[1], r.Eigenvalues[0]*r.Eigenvalues[1]
		if cmplx.Abs(sum-complex(T[0][0]+T[1][1], 0)) > 1e-9 || cmplx.Abs(prod-complex(T[0][0]*T[1][1]-T[0][1]*T[1][0], 0)) > 1e-9 {
			t.Fatalf("%+v: λ1+λ2 = %v, λ1λ2 = %v vs the matrix's trace and determinant", p, sum, prod)
		}
		jury := p.Alpha*p.Mu < 1 && 1-r.Trace+r.Det > 0 && 1+r.Trace+r.Det > 0
		if jury != r.SchurStable && math.Abs(r.SpectralRadius-1) > 1e-9 {
			t.Fatalf("%+v: Jury %v, radius %v", p, jury, r.SpectralRadius)
		}
		if r.Oscillatory && !near(cmplx.Abs(r.Eigenvalues[0]), math.Sqrt(p.Alpha*p.Mu), 1e-12) {
			t.Fatalf("%+v: complex |λ| = %v, want sqrt(αμ)", p, cmplx.Abs(r.Eigenvalues[0]))
		}
		if p.Alpha*p.Mu > 1e-6 && r.RightHalf != (real(r.Eigenvalues[0]) > 0 && real(r.Eigenvalues[1]) > 0) {
			t.Fatalf("%+v: right_half %v but λ = %v", p, r.RightHalf, r.Eigenvalues)
		}
		// power iteration: ||T^n v||^(1/n) tends to the spectral radius
		if r.SpectralRadius > 0.2 {
			v := [2]float64{1, 0.37}
			logNorm := 0.0
			const n = 4000
			for k := 0; k < n; k++ {
				v = [2]float64{T[0][0]*v[0] + T[0][1]*v[1], T[1][0]*v[0] + T[1][1]*v[1]}
				s := math.Hypot(v[0], v[1])
				if s == 0 {
					break
				}
				logNorm += math.Log(s)
				v[0], v[1] = v[0]/s, v[1]/s
			}
			if est := math.Exp(logNorm / n); math.Abs(est-r.SpectralRadius) > 0.01*r.SpectralRadius {
				t.Fatalf("%+v: power iteration %v, closed form %v", p, est, r.SpectralRadius)
			}
		}
	}
}

func TestPointJSONIsExactlyTheDocumentedShape(t *testing.T) {
	b, err := json.Marshal(Analyze(Point{Alpha: 0.81, Beta: 2, Eta: 1, Mu: 0.81}).JSON())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"eigenvalues":[[-0.0000000000000000,0.81],[-0.0000000000000000,-0.81]],"spectral_radius":0.81,"schur_stable":true,"right_half":false,"oscillatory":true}`
	var got, exp map[string]any
	_ = json.Unmarshal(b, &got)
	_ = json.Unmarshal([]byte(want), &exp)
	if len(got) != 5 || !bytes.HasPrefix(b, []byte(`{"eigenvalues":[[`)) {
		t.Errorf("json: %s", b)
	}
	for k := range exp {
		if _, ok := got[k]; !ok {
			t.Errorf("missing %s in %s", k, b)
		}
	}
}

func TestChunkRisk(t *testing.T) {
	const T = 128
	la, lm := make([]float64, T), make([]float64, T)
	for i := range la {
		la[i], lm[i] = math.Log(0.99), math.Log(0.99)-0.3 // the spec §2.5 gap 0.3 per step
	}
	gap, over, prec := ChunkRisk(la, lm, 64)
	if !near(gap, 63*0.3, 1e-9) || over || !prec {
		t.Errorf("gap 0.3: %v %v %v", gap, over, prec)
	}
	for i := range lm {
		lm[i] = la[i] - 1.5
	}
	if gap, over, _ = ChunkRisk(la, lm, 64); !near(gap, 94.5, 1e-9) || !over {
		t.Errorf("gap 1.5: %v %v", gap, over)
	}
	// μ ≥ α (the benign direction): no risk; a burst of 10 steps with gap 2 inside: 20
	for i := range lm {
		lm[i] = la[i] + 0.1
	}
	for i := 70; i < 80; i++ {
		lm[i] = la[i] - 2
	}
	if gap, _, prec = ChunkRisk(la, lm, 64); !near(gap, 20, 1e-9) || !prec {
		t.Errorf("burst: %v", gap)
	}
}

func TestGatesMatchPythonGolden(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "gates_golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		Mode           string   `json:"mode"`
		UsePTimesAlpha bool     `json:"use_p_times_alpha"`
		MinLogMu       *float64 `json:"min_log_mu"`
		A, B, M, E     float64
		ALog           float64 `json:"A_log"`
		MuLog          float64 `json:"Mu_log"`
		DtBias         float64 `json:"dt_bias"`
		MuBias         float64 `json:"mu_bias"`
		LogFactor      float64 `json:"log_factor"`
		Want           Gates   `json:"want"`
	}
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) < 100 {
		t.Fatalf("only %d golden cases", len(cases))
	}
	for _, c := range cases {
		g, err := Compute(c.Mode, Raw{A: c.A, B: c.B, M: c.M, E: c.E, ALog: c.ALog, MuLog: c.MuLog, DtBias: c.DtBias,
			MuBias: c.MuBias, LogFactor: c.LogFactor, MinLogMu: c.MinLogMu, UsePTimesAlpha: c.UsePTimesAlpha})
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range [][3]any{{"log_alpha", g.LogAlpha, c.Want.LogAlpha}, {"beta", g.Beta, c.Want.Beta},
			{"log_mu", g.LogMu, c.Want.LogMu}, {"eta", g.Eta, c.Want.Eta}} {
			if !near(x[1].(float64), x[2].(float64), 1e-9) {
				t.Errorf("%s %+v: %s = %v, python %v", c.Mode, c, x[0], x[1], x[2])
			}
		}
	}
}

func (g *Gates) UnmarshalJSON(b []byte) error {
	var m struct {
		LogAlpha float64 `json:"log_alpha"`
		Beta     float64 `json:"beta"`
		LogMu    float64 `json:"log_mu"`
		Eta      float64 `json:"eta"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*g = Gates{LogAlpha: m.LogAlpha, Beta: m.Beta, LogMu: m.LogMu, Eta: m.Eta}
	return nil
}

// Spec §5.2: the paper's trig constraint with ρ = α and min_log_mu > ln(1/8) keeps every point in the right
// half-plane; with ρ = 1 it does not, nor does the unconstrained mode; our quadrant mode does for both ρ,
// without a clamp on μ.
func TestModeSweepsAgainstTheSpecClaims(t *testing.T) {
	m2 := -2.0
	for _, tc := range []struct {
		mode     string
		rho      Rho
		clamp    *float64
		allRight bool
	}{
		{"trig", RhoAlpha, &m2, true},
		{"trig", RhoOne, &m2, false},
		{"none", RhoAlpha, nil, false},
		{"clamp", RhoAlpha, &m2, false},
		{"quadrant", RhoAlpha, nil, true},
		{"quadrant", RhoOne, nil, true},
	} {
		rows, err := SweepMode(SweepOptions{Mode: tc.mode, Rho: tc.rho, MinLogMu: tc.clamp, Range: 6, N: 7, NParams: 3})
		if err != nil {
			t.Fatal(err)
		}
		s := Summarize(rows)
		if all := s.RightHalf == s.Points; all != tc.allRight {
			t.Errorf("%s rho=%v: right half at %d of %d points (min margin %.3g)", tc.mode, tc.rho, s.RightHalf, s.Points, s.MinMargin)
		}
		if tc.allRight && s.SchurStable != s.Points {
			t.Errorf("%s rho=%v: right half but not Schur-stable somewhere", tc.mode, tc.rho)
		}
	}
}

func TestParseAxis(t *testing.T) {
	for in, want := range map[string][]float64{"0.5": {0.5}, "0.1,0.2": {0.1, 0.2}, "0:1:5": {0, 0.25, 0.5, 0.75, 1}, "2:2:1": {2}} {
		got, err := ParseAxis("alpha", in)
		if err != nil || len(got) != len(want) {
			t.Errorf("%q: %v %v", in, got, err)
			continue
		}
		for i := range got {
			if !near(got[i], want[i], 1e-15) {
				t.Errorf("%q: %v", in, got)
			}
		}
	}
	for _, bad := range []string{"", "x", "0:1", "0:1:0", "1,,2"} {
		if _, err := ParseAxis("beta", bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if err := (Point{Alpha: 1.5, Mu: 0.5}).Validate(); err == nil {
		t.Error("alpha 1.5 accepted")
	}
}

func TestPlotRegionWritesAnImage(t *testing.T) {
	a, _ := ParseAxis("alpha", "0.05:1:30")
	b, _ := ParseAxis("beta", "0:3:30")
	rows, err := Grid(a, b, []float64{1}, []float64{0.5}, RhoOne)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "region.png")
	if err := PlotRegion(rows, "alpha", "beta", "test", p); err != nil {
		t.Fatal(err)
	}
	b2, err := os.ReadFile(p)
	if err != nil || !bytes.HasPrefix(b2, []byte("\x89PNG")) || len(b2) < 2000 {
		t.Errorf("png: %d bytes, %v", len(b2), err)
	}
}
