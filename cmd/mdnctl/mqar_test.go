package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/mdnctl/mdnctl/results"
	"github.com/mdnctl/mdnctl/sweep"
)

// The shipped MQAR sweeps expand: the Zoology grid (and its time-budget copy) has 5 models x 3 splits x 3
// widths x 4 learning rates, every point with the (1024, 256) test split.
func TestMQARSweepFilesExpand(t *testing.T) {
	for _, name := range []string{"mqar.toml", "mqar-h100.toml"} {
		f, plan := expandShippedSweep(t, name)
		if f.Job != "mqar" || len(plan.Points) != 180 {
			t.Fatalf("%s: job %q, %d points", name, f.Job, len(plan.Points))
		}
		models := map[string]int{}
		for _, p := range plan.Points {
			models[p.Values["model"].(string)+"/"+p.Values["constraint"].(string)]++
		}
		for _, m := range []string{"mdn/trig", "mdn/clamp", "mdn/none", "gdn/none", "transformer/none"} {
			if models[m] != 36 {
				t.Errorf("%s: %d points of %s, want 36", name, models[m], m)
			}
		}
		if fmt.Sprint(f.TaskParams["test_splits"]) != "[map[num_pairs:256 seq_len:1024]]" {
			t.Errorf("%s: test_splits %v", name, f.TaskParams["test_splits"])
		}
	}
}

// sweeps/mqar-tiny.toml on the real runner (CPU): every point ok, the MDN point above 0.9 accuracy (this can
// fail: a broken MDN layer stays near chance, 1/33), in about a minute. Skipped without the repository's .venv.
func TestSweepMQARTinyIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	py := os.Getenv("MDN_PYTHON")
	if py == "" {
		py = filepath.Join("..", "..", ".venv", "bin", "python")
	}
	if _, err := os.Stat(py); err != nil {
		t.Skip("no venv python: run make setup")
	}
	if err := exec.Command(py, "-c", "import mdn.tasks.train_mqar, mdn.models").Run(); err != nil {
		t.Skipf("%s cannot import mdn.tasks / mdn.models: %v", py, err)
	}
	abs, _ := filepath.Abs(py)
	out := t.TempDir()
	start := time.Now()
	code, stdout, errOut := runCLI("sweep", filepath.Join("..", "..", "sweeps", "mqar-tiny.toml"), "--out", out, "--gpus", "cpu", "--python", abs)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, errOut)
	}
	took := time.Since(start)
	t.Logf("mqar-tiny took %s", took)
	if took > 4*time.Minute { // the target is < 2 minutes on an idle 2-core machine; allow a busy one
		t.Errorf("mqar-tiny took %s; it should stay under two minutes", took)
	}
	rows := readRowsT(t, out)
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}
	for _, r := range rows {
		if results.Str(r, "status") != "ok" {
			t.Fatalf("%v: %v %v %v", r["model"], r["status"], r["reason"], r["stderr_tail"])
		}
		acc, _ := r["accuracy"].(float64)
		t.Logf("%v: accuracy %.3f after %v steps (%v)", r["model"], acc, r["steps_done"], r["stop"])
		if r["model"] == "mdn" && acc <= 0.9 {
			t.Errorf("MDN reached accuracy %.3f on MQAR (64, 4); want > 0.9", acc)
		}
		if r["device"] == nil || r["versions"].(map[string]any)["torch"] == nil {
			t.Errorf("row without device/versions: %v", r)
		}
	}
}

// sweeps/mqar-budget.toml: the same cells as the Zoology grid (5 models x 3 splits x 3 widths) at 2 learning
// rates on a step budget; the points a one-call GPU run must reach first are width 128 x {MDN trig, GDN,
// Transformer} x the three splits, all nine at one rate, then the same at the other rate (scripts/gpu_mqar.sh runs
// the plan roughly in order).
func TestMQARBudgetSweepOrder(t *testing.T) {
	f, err := sweep.Load(filepath.Join("..", "..", "sweeps", "mqar-budget.toml"))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := f.Expand()
	if err != nil {
		t.Fatal(err)
	}
	if f.Job != "mqar" || len(plan.Points) != 90 {
		t.Fatalf("job %q, %d points, want mqar and 90", f.Job, len(plan.Points))
	}
	first := map[string]int{}
	rates := map[string]bool{}
	for _, p := range plan.Points[:18] {
		if d := fmt.Sprint(p.Values["d_model"]); d != "128" {
			t.Errorf("point %d has d_model %s; the first 18 should be width 128", p.Index, d)
		}
		first[fmt.Sprintf("%v/%v/%v", p.Values["model"], p.Values["constraint"], p.Values["seq_len"])]++
		if p.Index < 9 {
			rates[fmt.Sprint(p.Values["lr"])] = true
		}
	}
	for _, m := range []string{"mdn/trig", "gdn/none", "transformer/none"} {
		for _, l := range []string{"128", "256", "512"} {
			if first[m+"/"+l] != 2 {
				t.Errorf("first 18 points: %d of %s at seq_len %s, want 2 (one per learning rate)", first[m+"/"+l], m, l)
			}
		}
	}
	if len(rates) != 1 {
		t.Errorf("the first 9 points use rates %v; want one rate (all nine cells before any second rate)", rates)
	}
	cells := map[string]bool{}
	for _, p := range plan.Points {
		cells[fmt.Sprintf("%v/%v/%v/%v", p.Values["model"], p.Values["constraint"], p.Values["seq_len"], p.Values["d_model"])] = true
	}
	if len(cells) != 45 {
		t.Errorf("%d cells, want 45 (5 models x 3 splits x 3 widths)", len(cells))
	}
	// the budget is in steps; a time limit is only a guard (12 s per point learned nothing, docs/BENCHMARKS.md §4)
	if n, _ := f.TaskParams["steps"].(int64); n < 1000 {
		t.Errorf("steps = %v in [mqar]; want a budget of >= 1000 optimizer steps", f.TaskParams["steps"])
	}
	if s, ok := f.TaskParams["max_seconds"].(float64); ok && s < 300 {
		t.Errorf("max_seconds = %v: a guard must not cut a point below ~1000 steps (want >= 300 s)", s)
	}
}

// sweeps/mqar-budget-4lr.toml: the budget grid with four learning rates per cell (the "best of 4"); every
// point of mqar-budget.toml is a point of it with the same id, so rows already measured count as done under
// --resume, and within each width the two new rates come first.
func TestMQARBudgetFourRatesExtendsTwoRates(t *testing.T) {
	_, two := expandShippedSweep(t, "mqar-budget.toml")
	_, four := expandShippedSweep(t, "mqar-budget-4lr.toml")
	if len(four.Points) != 2*len(two.Points) {
		t.Fatalf("%d points, want %d (twice mqar-budget.toml's)", len(four.Points), 2*len(two.Points))
	}
	ids := map[string]bool{}
	for _, p := range four.Points {
		ids[p.ID] = true
	}
	oldRates := map[string]bool{}
	for _, p := range two.Points {
		oldRates[fmt.Sprint(p.Values["lr"])] = true
		if !ids[p.ID] {
			t.Errorf("point %s of mqar-budget.toml (%v) is not in mqar-budget-4lr.toml", p.ID, p.Values)
		}
	}
	rates := map[string]map[string]bool{}
	for i, p := range four.Points {
		cell := fmt.Sprintf("%v/%v/%v/%v", p.Values["model"], p.Values["constraint"], p.Values["seq_len"], p.Values["d_model"])
		if rates[cell] == nil {
			rates[cell] = map[string]bool{}
		}
		rates[cell][fmt.Sprint(p.Values["lr"])] = true
		if i < 10 && oldRates[fmt.Sprint(p.Values["lr"])] {
			t.Errorf("plan position %d runs lr %v, which mqar-budget.toml ran already; the new rates go first", i, p.Values["lr"])
		}
	}
	for cell, r := range rates {
		if len(r) != 4 {
			t.Errorf("cell %s has rates %v, want 4", cell, r)
		}
	}
}

// expandShippedSweep loads sweeps/NAME and expands its grid, failing the test on any error.
func expandShippedSweep(t *testing.T, name string) (*sweep.File, *sweep.Plan) {
	t.Helper()
	f, err := sweep.Load(filepath.Join("..", "..", "sweeps", name))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := f.Expand()
	if err != nil {
		t.Fatal(err)
	}
	return f, plan
}
