package slurm_test

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/slurm"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got with testdata/name (rewritten with -update) and checks the script with bash -n.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./slurm -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (go test ./slurm -run %s -update, then review the diff):\n--- got\n%s", name, t.Name(), got)
	}
	if bash, err := exec.LookPath("bash"); err == nil {
		cmd := exec.Command(bash, "-n")
		cmd.Stdin = strings.NewReader(got)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("bash -n %s: %v\n%s", name, err, out)
		}
	}
}

func points(n int) []slurm.Point {
	var pts []slurm.Point
	for i := 0; i < n; i++ {
		id := string(rune('a'+i)) + "0"
		pts = append(pts, slurm.Point{ID: id, Spec: launcher.Spec{Kind: "echo", Params: map[string]any{"i": i}},
			Row: []byte(`{"variant":"v` + id + `"}`)})
	}
	return pts
}

func TestSweepScriptGolden(t *testing.T) {
	plan, err := slurm.PrepareSweep(slurm.SweepSubmission{
		Name:   "chunk sizes",
		OutDir: "/shared/mdn/results/chunk_sizes",
		Points: points(10),
		Config: slurm.Config{
			Partition: "gpu", Account: "proj42", QOS: "normal", Time: "02:00:00", GPUs: 1, GPUType: "h100",
			CPUsPerTask: 8, Mem: "64G", Concurrency: 3, Shards: 4, PointTimeout: "10m",
			Extra: []string{"--exclusive", "#SBATCH --mail-type=END"},
			Setup: []string{"module load cuda/12.4", "source /shared/env.sh"},
		},
		Binary:   "/shared/mdn/bin/mdnctl",
		Python:   "/shared/mdn/.venv/bin/python",
		RepoRoot: "/shared/mdn",
		After:    []string{"afterok:41"},
		Env:      map[string]string{"TRITON_CACHE_DIR": "/scratch/$USER/triton cache"},
	})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "sweep.sbatch.golden", plan.Script)
	if plan.ScriptPath != "/shared/mdn/results/chunk_sizes/slurm/sub-01/sweep.sbatch" {
		t.Errorf("script path %s", plan.ScriptPath)
	}
}

func TestSweepScriptMinimal(t *testing.T) {
	plan, err := slurm.PrepareSweep(slurm.SweepSubmission{Name: "demo", OutDir: "/r/demo", Points: points(3),
		Binary: "/b/mdnctl", Python: "/p/python"})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "sweep-minimal.sbatch.golden", plan.Script)
	// No concurrency: no %; no GPUs: no gres.
	if strings.Contains(plan.Script, "%") && strings.Contains(plan.Script, "--array=0-2%") {
		t.Error("array limit without concurrency")
	}
	if strings.Contains(plan.Script, "--gres") {
		t.Error("gres without gpus")
	}
}

func TestSweepScriptSweepFile(t *testing.T) {
	out := t.TempDir()
	plan, err := slurm.PrepareSweep(slurm.SweepSubmission{Name: "tiny", OutDir: out, Points: []slurm.Point{{ID: "p1"}, {ID: "p2"}},
		SweepFile: "testdata/tiny-sweep.toml", Config: slurm.Config{GPUs: 2, Concurrency: 1}, Binary: "/b/mdnctl", Python: "/p/python"})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "sweep-file.sbatch.golden", strings.ReplaceAll(plan.Script, out, "/OUT"))
	if err := plan.Write(); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile("testdata/tiny-sweep.toml")
	b, err := os.ReadFile(filepath.Join(plan.Dir, "sweep.toml"))
	if err != nil || string(a) != string(b) {
		t.Fatalf("the sweep file is not copied next to the script: %v", err)
	}
	if _, err := slurm.PrepareSweep(slurm.SweepSubmission{OutDir: out, Points: []slurm.Point{{ID: "p1"}},
		SweepFile: "testdata/missing.toml", Binary: "/b", Python: "/p"}); err == nil {
		t.Error("missing sweep file accepted")
	}
}

func TestTrainScriptGolden(t *testing.T) {
	spec := &launcher.Spec{Kind: "train", Params: map[string]any{"config": "resolved.json"}}
	for _, tc := range []struct {
		name string
		cfg  slurm.Config
	}{
		{"train-static.sbatch.golden", slurm.Config{Partition: "gpu", Time: "1-00:00:00", Nodes: 2, GPUs: 8,
			CPUsPerTask: 64, Setup: []string{"module load cuda"}}},
		{"train-c10d.sbatch.golden", slurm.Config{Nodes: 4, GPUs: 4, ProcsPerNode: 4, Rendezvous: "c10d", Port: 29400,
			Extra: []string{"--exclusive"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := slurm.PrepareTrain(slurm.TrainSubmission{Name: "mdn-1.3b", RunDir: "/shared/runs/mdn-1.3b",
				Spec: spec, Config: tc.cfg, Binary: "/shared/mdn/bin/mdnctl", Python: "/shared/mdn/.venv/bin/python"})
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, plan.Script)
		})
	}
}

func TestTrainScriptCommand(t *testing.T) {
	plan, err := slurm.PrepareTrain(slurm.TrainSubmission{Name: "x", RunDir: "/runs/x",
		Command: []string{"-m", "mdn.train", "--config", "/runs/x/config.json"}, Python: "/p/python",
		Config: slurm.Config{GPUs: 2}})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "train-command.sbatch.golden", plan.Script)
	if _, err := slurm.PrepareTrain(slurm.TrainSubmission{RunDir: "/r", Python: "/p"}); err == nil {
		t.Error("a training submission without spec or command was accepted")
	}
}

func TestDryRunWritesNothing(t *testing.T) {
	out := filepath.Join(t.TempDir(), "r")
	plan, err := slurm.PrepareSweep(slurm.SweepSubmission{Name: "d", OutDir: out, Points: points(5),
		Config: slurm.Config{Shards: 2, Concurrency: 1}, Binary: "/b", Python: "/p"})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := plan.DryRun(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sbatch --parsable " + plan.ScriptPath, "5 points in 2 array tasks (1 at a time); points per task: 3 2", "#SBATCH --array=0-1%1"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("dry run lacks %q:\n%s", want, b.String())
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("dry run created %s", out)
	}
	tp, err := slurm.PrepareTrain(slurm.TrainSubmission{RunDir: out, Command: []string{"x.py"}, Python: "/p",
		Config: slurm.Config{Nodes: 2, GPUs: 4}})
	if err != nil {
		t.Fatal(err)
	}
	b.Reset()
	_ = tp.DryRun(&b)
	if !strings.Contains(b.String(), "torchrun on 2 node(s) x 4 process(es)") {
		t.Errorf("train dry run:\n%s", b.String())
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("dry run created %s", out)
	}
}
