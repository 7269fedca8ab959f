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
		f, err := sweep.Load(filepath.Join("..", "..", "sweeps", name))
		if err != nil {
			t.Fatal(err)
		}
		plan, err := f.Expand()
		if err != nil {
			t.Fatal(err)
		}
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
