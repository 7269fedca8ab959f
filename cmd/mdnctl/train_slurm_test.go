package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mdnctl/mdnctl/train"
)

// writeTrainTOML writes configs/mdn-tiny.toml under another name with extra text appended.
func writeTrainTOML(t *testing.T, name, extra string) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "..", "configs", "mdn-tiny.toml"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(src), `name = "mdn-tiny"`, `name = "`+name+`"`, 1) + extra
	p := filepath.Join(t.TempDir(), name+".toml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const testSlurmTable = `
[slurm]
partition = "cpu"
cpus_per_task = 2
time = "00:10:00"
python = "/opt/venv/bin/python"
binary = "/opt/bin/mdnctl"
extra = ["--exclusive"]
`

func newSlurmTrain(t *testing.T) (*trainOptions, *bytes.Buffer, *bytes.Buffer) {
	o, out, errb := newTestTrain(&fakeTrainRunner{}, 0, false)
	o.Backend = "slurm"
	o.slurmFlags.GPUsPerNode = -1
	o.g.RepoRoot = "/repo"
	return o, out, errb
}

// The dry run shows the torchrun command and the script exactly as it would be submitted, and writes nothing.
func TestTrainSlurmDryRunGolden(t *testing.T) {
	cfg := writeTrainTOML(t, "tiny-slurm", testSlurmTable)
	run := filepath.Join(t.TempDir(), "run")
	o, out, _ := newSlurmTrain(t)
	o.DryRun, o.Out = true, run
	o.Sets = []string{"steps=10", "nproc_per_node=2"}
	o.slurmFlags.Nodes, o.slurmFlags.Account, o.slurmFlags.Time = 2, "proj42", "30"
	if err := o.run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(run); !os.IsNotExist(err) {
		t.Fatalf("dry run created %s", run)
	}
	got := strings.ReplaceAll(strings.ReplaceAll(out.String(), run, "$RUN"), cfg, "$CONFIG")
	golden := filepath.Join("testdata", "train_slurm_dryrun.golden")
	if os.Getenv("MDN_UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (regenerate with MDN_UPDATE_GOLDEN=1 go test ./cmd/mdnctl -run TrainSlurmDryRun, review the diff)", err)
	}
	if got != string(want) {
		t.Errorf("dry run differs from %s (MDN_UPDATE_GOLDEN=1 to regenerate):\n%s", golden, got)
	}
	for _, w := range []string{"torchrun:   \"$MDN_PYTHON\" -m torch.distributed.run --nnodes=\"$SLURM_NNODES\" --nproc_per_node=2",
		"#SBATCH --nodes=2", "#SBATCH --account=proj42", "#SBATCH --time=30", "#SBATCH --partition=cpu",
		"#SBATCH --cpus-per-task=2", "#SBATCH --exclusive", "/opt/bin/mdnctl run-shard", "--metrics $RUN/metrics.jsonl"} {
		if !strings.Contains(got, w) {
			t.Errorf("dry run lacks %q", w)
		}
	}
	// the script part is valid bash
	i := strings.Index(got, "#!/bin/bash")
	if i < 0 {
		t.Fatal("no script in the dry run")
	}
	if bash, err := exec.LookPath("bash"); err == nil {
		cmd := exec.Command(bash, "-n")
		cmd.Stdin = strings.NewReader(got[i:])
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("bash -n: %v %s", err, b)
		}
	}
}

// A submission writes the run directory as a local run does, records the job, refuses a second submission while
// it is queued, and status / cancel / --wait work on the directory.
func TestTrainSlurmSubmitStatusCancelWait(t *testing.T) {
	f := withFakeSlurm(t)
	cfg := writeTrainTOML(t, "tiny-slurm", testSlurmTable)
	run := filepath.Join(t.TempDir(), "run")
	o, out, _ := newSlurmTrain(t)
	o.Out, o.Sets = run, []string{"steps=10", "nproc_per_node=2"}
	if err := o.run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if f.Count("sbatch") != 1 || !strings.Contains(out.String(), "submitted job 100") {
		t.Fatalf("sbatch calls %d, output %q", f.Count("sbatch"), out.String())
	}
	for _, p := range []string{train.ConfigFile, train.SpecFile, train.MetricsFile, "slurm/jobs.json",
		"slurm/sub-01/train.sbatch", "slurm/sub-01/job.jsonl", "slurm/logs", "slurm/" + slurmConfigFile} {
		if _, err := os.Stat(filepath.Join(run, p)); err != nil {
			t.Errorf("run dir lacks %s: %v", p, err)
		}
	}
	var spec struct {
		Kind   string
		Params map[string]any
	}
	b, _ := os.ReadFile(filepath.Join(run, train.SpecFile))
	if err := json.Unmarshal(b, &spec); err != nil || spec.Kind != "train" {
		t.Fatalf("job.json: %v %s", err, b)
	}
	if c, _ := os.ReadFile(filepath.Join(run, train.ConfigFile)); strings.Contains(string(c), "[slurm]") || !strings.Contains(string(c), "steps = 10") {
		t.Errorf("resolved config:\n%s", c)
	}
	// a second submission while the first is queued is refused, naming mdnctl cancel
	o2, _, _ := newSlurmTrain(t)
	o2.Out, o2.Resume = run, true
	err := o2.run(context.Background(), "")
	var ue *userError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "mdnctl cancel") {
		t.Fatalf("second submission: %v", err)
	}
	stdout, _, code := slurmCLI(t, "status", run)
	if code != 0 || !strings.Contains(stdout, "train") || !strings.Contains(stdout, "PENDING") {
		t.Fatalf("status (%d):\n%s", code, stdout)
	}
	if _, errOut, code := slurmCLI(t, "cancel", run); code != 0 || f.Count("scancel") != 1 {
		t.Fatalf("cancel (%d, %d scancel): %s", code, f.Count("scancel"), errOut)
	}

	// resume (CONFIG-less: the saved [slurm] settings are used) and --wait until the job completes
	f.Set("100", -1, "CANCELLED", 143)
	o3, out3, _ := newSlurmTrain(t)
	o3.Out, o3.Resume, o3.Wait, o3.pollInterval = run, true, true, 10*time.Millisecond
	o3.Sets = []string{"steps=12"}
	done := make(chan error, 1)
	go func() { done <- o3.run(context.Background(), "") }()
	deadline := time.Now().Add(60 * time.Second)
	for f.Count("sbatch") < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	script, _ := os.ReadFile(filepath.Join(run, "slurm", "sub-02", "train.sbatch"))
	if !strings.Contains(string(script), "#SBATCH --partition=cpu") || !strings.Contains(string(script), "/opt/bin/mdnctl") {
		t.Errorf("resumed script lost the [slurm] settings:\n%s", script)
	}
	for r := 0; r < 2; r++ {
		row := `{"point":"train-tiny-slurm","rank":` + string(rune('0'+r)) + `,"status":"ok","result":{"name":"tiny-slurm","steps_done":12,"steps":12,"first_loss":5.5,"final_loss":4.1,"world_size":2,"device":"cpu","precision":"fp32"}}` + "\n"
		if err := os.WriteFile(filepath.Join(run, "slurm", "result.101.rank"+string(rune('0'+r))+".jsonl"), []byte(row), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f.Set("101", -1, "COMPLETED", 0)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("--wait did not return")
	}
	if !strings.Contains(out3.String(), "trained tiny-slurm: steps 12/12") {
		t.Errorf("summary: %q", out3.String())
	}
	if _, err := os.Stat(filepath.Join(run, train.ResultFile)); err != nil {
		t.Errorf("no result.json: %v", err)
	}
}

// A failed job makes --wait fail with the job, its state and the log path.
func TestTrainSlurmWaitFailure(t *testing.T) {
	f := withFakeSlurm(t)
	run := filepath.Join(t.TempDir(), "run")
	o, _, _ := newSlurmTrain(t)
	o.Out, o.Wait, o.pollInterval = run, true, 10*time.Millisecond
	done := make(chan error, 1)
	go func() { done <- o.run(context.Background(), writeTrainTOML(t, "t", "")) }()
	for f.Count("sbatch") < 1 {
		time.Sleep(5 * time.Millisecond)
	}
	_ = os.WriteFile(filepath.Join(run, "slurm", "result.100.rank1.jsonl"),
		[]byte(`{"rank":1,"status":"failed","error":"boom"}`+"\n"), 0o644)
	f.Set("100", -1, "FAILED", 1)
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "job 100 ended FAILED") || !strings.Contains(err.Error(), "rank 1 failed: boom") ||
		!strings.Contains(err.Error(), "train_100.out") {
		t.Fatalf("err = %v", err)
	}
}

// Bad [slurm] keys and values are reported before anything is submitted, with file:line; the rest of the
// training TOML keeps its line numbers.
func TestTrainSlurmBadConfig(t *testing.T) {
	f := withFakeSlurm(t)
	for _, c := range []struct{ extra, want string }{
		{"\n[slurm]\nnodez = 2\n", `:48: slurm.nodez = "…": unknown key`},
		{"\n[slurm]\ntime = \"2h\"\n", `:48: slurm.time = "2h": expected a Slurm time limit`},
		{"\n[slurm]\ngpus = \"two\"\n", `:48: slurm.gpus: incompatible types`},
		{"\n[slurm]\nextra = [\"--array=0-3\"]\n", `:48: slurm.extra[0] = "--array=0-3": --array is set by mdnctl`},
		{"\n[slurm]\nnodes = 1\n\n[optimizer]\nlr = 1\n", `:50: unknown section "optimizer"`},
	} {
		cfg := writeTrainTOML(t, "bad", c.extra)
		_, errOut, code := slurmCLI(t, "train", cfg, "--backend", "slurm", "--out", filepath.Join(t.TempDir(), "r"))
		if code == 0 || !strings.Contains(errOut, cfg+c.want) || strings.Count(strings.TrimSpace(errOut), "\n") > 0 {
			t.Errorf("%q: exit %d, want %q in one line:\n%s", c.extra, code, cfg+c.want, errOut)
		}
	}
	_, errOut, code := slurmCLI(t, "train", "tiny", "--backend", "slurm", "--time", "2h", "--dry-run")
	if code == 0 || !strings.Contains(errOut, `command line: slurm.time = "2h"`) {
		t.Errorf("--time 2h: %d %s", code, errOut)
	}
	_, errOut, code = slurmCLI(t, "train", "tiny", "--backend", "pbs")
	if code == 0 || !strings.Contains(errOut, `--backend "pbs": expected local or slurm`) {
		t.Errorf("--backend pbs: %d %s", code, errOut)
	}
	_, errOut, code = slurmCLI(t, "train", "tiny", "--wait", "--dry-run")
	if code == 0 || !strings.Contains(errOut, "need --backend slurm") {
		t.Errorf("--wait without slurm: %d %s", code, errOut)
	}
	stdout, errOut, code := slurmCLI(t, "train", "tiny", "--backend", "slurm", "--dry-run", "--json", "--nodes", "2")
	var js struct {
		Torchrun, Script string
		Slurm            struct{ Nodes int }
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &js) != nil || js.Slurm.Nodes != 2 ||
		!strings.Contains(js.Torchrun, "torch.distributed.run") || !strings.HasPrefix(js.Script, "#!/bin/bash") {
		t.Errorf("--dry-run --json: %d %s %s", code, stdout, errOut)
	}
	if f.Count("sbatch") != 0 {
		t.Errorf("bad configs were submitted")
	}
	// a [slurm] table does not disturb a local run's config loading
	cfg := writeTrainTOML(t, "local-ok", testSlurmTable)
	if c, err := loadTrainConfig(cfg); err != nil || c.Name != "local-ok" || c.Source != cfg {
		t.Errorf("loadTrainConfig: %v %+v", err, c)
	}
}

// Real Slurm: `mdnctl train` with two CPU processes under sbatch, --wait, metrics.jsonl written, then resumed.
func TestSlurmTrainIntegration(t *testing.T) {
	if os.Getenv("MDN_SLURM_TEST") != "1" {
		t.Skip("real-Slurm integration test skipped: start a cluster with scripts/slurm-up.sh (root) and set MDN_SLURM_TEST=1")
	}
	if out, err := exec.Command("sinfo", "-h", "-o", "%t").Output(); err != nil || !regexp.MustCompile(`idle|mix`).Match(out) {
		t.Fatalf("no idle Slurm node (scripts/slurm-up.sh): %v %s", err, out)
	}
	py := filepath.Join("..", "..", ".venv", "bin", "python")
	if err := exec.Command(py, "-c", "import torch.distributed.run, mdn.train").Run(); err != nil {
		t.Skipf("%s cannot import torch / mdn.train: %v", py, err)
	}
	dir := t.TempDir()
	if keep := os.Getenv("MDN_SLURM_TEST_KEEP"); keep != "" {
		dir = keep
	}
	bin := filepath.Join(dir, "mdnctl")
	if b, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build mdnctl: %v\n%s", err, b)
	}
	cfg := writeTrainTOML(t, "tiny-slurm", "\n[slurm]\ncpus_per_task = 2\ntime = \"5\"\n")
	run := filepath.Join(dir, "run")
	_ = os.RemoveAll(run)
	mdnctl := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir = filepath.Join("..", "..")
		b, err := cmd.CombinedOutput()
		if err != nil {
			logs, _ := filepath.Glob(filepath.Join(run, "slurm", "logs", "*"))
			for _, l := range logs {
				lb, _ := os.ReadFile(l)
				t.Logf("%s:\n%s", l, lb)
			}
			t.Fatalf("mdnctl %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	out := mdnctl("train", cfg, "--backend", "slurm", "--set", "steps=10", "--set", "nproc_per_node=2", "--out", run, "--wait")
	if !strings.Contains(out, "steps 10/10") || !strings.Contains(out, "2 process(es), cpu") {
		t.Fatalf("train output:\n%s", out)
	}
	countMetrics := func() int {
		b, err := os.ReadFile(filepath.Join(run, train.MetricsFile))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "\n")
	}
	if n := countMetrics(); n != 10 {
		t.Fatalf("metrics.jsonl has %d rows, want 10", n)
	}
	st := mdnctl("status", run)
	if !strings.Contains(st, "train DONE") || !strings.Contains(st, "rank 1: ok") {
		t.Fatalf("status:\n%s", st)
	}
	out = mdnctl("train", "--backend", "slurm", "--resume", "--set", "steps=12", "--out", run, "--wait")
	if !strings.Contains(out, "steps 12/12") || countMetrics() != 12 {
		t.Fatalf("resume: %d metric rows\n%s", countMetrics(), out)
	}
	if _, ok := train.LatestCheckpoint(run); !ok {
		t.Error("no checkpoint")
	}
	t.Logf("status:\n%s", mdnctl("status", run))
}
