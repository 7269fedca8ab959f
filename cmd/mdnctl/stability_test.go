package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The documented one-point JSON: exactly five keys, in this order, with [re, im] pairs.
func TestStabilityPointJSON(t *testing.T) {
	code, out, errOut := runCLI("stability", "--alpha", "0.9", "--beta", "0.1", "--eta", "1", "--mu", "0.5", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	shape := regexp.MustCompile(`^\{"eigenvalues":\[\[[-0-9.e]+,[-0-9.e]+\],\[[-0-9.e]+,[-0-9.e]+\]\],"spectral_radius":[0-9.e-]+,"schur_stable":(true|false),"right_half":(true|false),"oscillatory":(true|false)\}\n$`)
	if !shape.MatchString(out) {
		t.Fatalf("json shape: %q", out)
	}
	var got struct {
		Eigenvalues    [][]float64 `json:"eigenvalues"`
		SpectralRadius float64     `json:"spectral_radius"`
		SchurStable    bool        `json:"schur_stable"`
		RightHalf      bool        `json:"right_half"`
		Oscillatory    bool        `json:"oscillatory"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	// tr = 0.9 + 0.5 - 0.1*0.9 = 1.31, det = 0.45: complex, |λ| = sqrt(0.45)
	if math.Abs(got.Eigenvalues[0][0]-0.655) > 1e-12 || math.Abs(got.Eigenvalues[0][1]-math.Sqrt(0.45-0.655*0.655)) > 1e-12 || got.Eigenvalues[1][1] != -got.Eigenvalues[0][1] ||
		!got.SchurStable || !got.RightHalf || !got.Oscillatory || math.Abs(got.SpectralRadius-math.Sqrt(0.45)) > 1e-12 {
		t.Errorf("values: %+v", got)
	}
	code, out, _ = runCLI("stability", "--alpha", "0.5", "--beta", "2.25", "--mu", "0.5", "--rho", "one", "--json")
	if code != 0 || !strings.Contains(out, `"eigenvalues":[[-0.25,0],[-1,0]]`) || !strings.Contains(out, `"schur_stable":false`) {
		t.Errorf("boundary point: %s", out)
	}
}

func TestStabilityGridAndMode(t *testing.T) {
	dir := t.TempDir()
	csvPath, png := filepath.Join(dir, "g.csv"), filepath.Join(dir, "g.png")
	code, out, errOut := runCLI("stability", "--alpha", "0.1:0.9:5", "--beta", "0,1,2", "--mu", "0.5", "--out", csvPath, "--plot", png)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "points 15:") || !strings.Contains(out, "│ 0.1 │ 0 ") {
		t.Errorf("grid output:\n%s", out)
	}
	b, _ := os.ReadFile(csvPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 16 || !strings.HasPrefix(lines[0], "alpha,beta,eta,mu,rho,schur_stable,right_half,oscillatory,margin") {
		t.Errorf("csv: %d lines, header %q", len(lines), lines[0])
	}
	if st, err := os.Stat(png); err != nil || st.Size() < 1000 {
		t.Errorf("plot: %v", err)
	}
	code, out, _ = runCLI("stability", "--mode", "trig", "--min-log-mu", "-2", "--n", "5", "--n-params", "3", "--json")
	var sum map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &sum) != nil || sum["points"] != 5.0*5*5*5*27 || sum["right_half"] != sum["points"] {
		t.Errorf("trig sweep: %d %s", code, out)
	}
	code, out, _ = runCLI("stability", "--mode", "quadrant", "--rho", "one", "--min-log-mu", "none", "--n", "5", "--n-params", "3")
	if code != 0 || !strings.Contains(out, "every point has tr T > 0") {
		t.Errorf("quadrant sweep: %s", out)
	}
	code, out, _ = runCLI("stability", "--mode", "none", "--n", "5", "--n-params", "3")
	if code != 0 || strings.Contains(out, "every point has tr T > 0") {
		t.Errorf("none sweep should leave the right half-plane somewhere: %s", out)
	}
}

func TestStabilityErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"stability", "--alpha", "0.5"}, "give --beta, --mu"},
		{[]string{"stability", "--alpha", "1.5", "--beta", "0", "--mu", "0.5"}, "alpha = 1.5: expected a number in [0, 1]"},
		{[]string{"stability", "--alpha", "0:1", "--beta", "0", "--mu", "0.5"}, `--alpha "0:1": expected start:stop:n`},
		{[]string{"stability", "--alpha", "0.5", "--beta", "0", "--mu", "0.5", "--rho", "two"}, `--rho "two": expected alpha or one`},
		{[]string{"stability", "--mode", "soft"}, `mode "soft": expected one of trig, clamp, none, quadrant`},
		{[]string{"stability", "--alpha", "0:1:3", "--beta", "0:1:3", "--mu", "0:1:3", "--plot", "x.png"}, "--plot draws two varying axes; 3 vary"},
	} {
		code, _, errOut := runCLI(tc.args...)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, %q; want %q", tc.args, code, errOut, tc.want)
		}
	}
}
