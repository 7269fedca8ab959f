package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/train"
)

// fakeTrainRunner answers a train job with two metric events and a canned result.
type fakeTrainRunner struct {
	spec launcher.Spec
	opts launcher.Options
	err  error
}

func (f *fakeTrainRunner) Run(ctx context.Context, opts launcher.Options, spec launcher.Spec) (*launcher.Outcome, error) {
	f.spec, f.opts = spec, opts
	if f.err != nil {
		return nil, f.err
	}
	for s := 1; s <= 2; s++ {
		opts.OnEvent(launcher.Event{V: 1, Event: "metric", Job: spec.ID,
			Data: json.RawMessage(fmt.Sprintf(`{"step": %d, "loss": %d.5, "lr": 0.001, "grad_norm": 1, "tokens_per_s": 2000, "tokens_per_s_per_gpu": 1000, "mfu": 0.25, "peak_mem_gb": 3}`, s, 5-s))})
	}
	res := `{"name": "mdn-tiny", "steps_done": 2, "steps": 2, "first_loss": 4.5, "final_loss": 3.5, "tokens_per_s": 2000,
	 "tokens_per_s_per_gpu": 1000, "world_size": 2, "device": "NVIDIA H100 80GB HBM3", "precision": "bf16", "mfu": 0.25,
	 "peak_mem_gb": 3, "checkpoint": "/x/checkpoints/step_000002"}`
	return &launcher.Outcome{JobID: spec.ID, Result: json.RawMessage(res)}, nil
}

func newTestTrain(runner launcher.JobRunner, gpus int, jsonOut bool) (*trainOptions, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	g := &globalOptions{Stdout: &out, Stderr: &errb, RepoRoot: filepath.Join("..", ".."), JSON: jsonOut}
	o := &trainOptions{g: g, runner: runner, gpus: func() int { return gpus },
		findPython: func() (string, string, error) { return "/venv/bin/python", "test", nil }}
	return o, &out, &errb
}

func TestTrainDryRun13B(t *testing.T) {
	code, out, errOut := runCLI("train", "1.3b", "--dry-run")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"mdn-1.3b.toml", "parameters: 1462646004 total (1.46B)", "torchrun:",
		"-m torch.distributed.run --standalone --nproc-per-node=", "-m mdn.runner", "resolved config:",
		"hidden_size = 2048", "min_log_mu = -1.0"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	o, buf, _ := newTestTrain(&fakeTrainRunner{}, 2, false)
	o.DryRun = true
	if err := o.run(context.Background(), "gdn-1.3b"); err != nil {
		t.Fatal(err)
	}
	if s := buf.String(); !strings.Contains(s, "--standalone --nproc-per-node=2 --no-python bash") ||
		!strings.Contains(s, "launch:     torchrun, 2 process(es) on cuda") || !strings.Contains(s, "1462129404 total") {
		t.Errorf("2 GPUs:\n%s", s)
	}
	o, buf, _ = newTestTrain(&fakeTrainRunner{}, 0, true)
	o.DryRun, o.Sets = true, []string{"steps=5", "nnodes=2", "rdzv_endpoint=head:29500"}
	if err := o.run(context.Background(), "1.3b"); err != nil {
		t.Fatal(err)
	}
	var plan struct {
		Params train.Counts
		Config map[string]any
		Launch struct {
			Torchrun bool
			Argv     []string
			Command  string
		}
	}
	if err := json.Unmarshal(buf.Bytes(), &plan); err != nil {
		t.Fatalf("%v\n%s", err, buf)
	}
	if plan.Params.Total != 1462646004 || plan.Config["train"].(map[string]any)["steps"] != 5.0 || !plan.Launch.Torchrun ||
		!strings.Contains(plan.Launch.Command, "--nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=head:29500") {
		t.Errorf("json plan: %+v", plan)
	}
}

func TestTrainUserErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"train", "2b"}, `unknown config "2b": expected a TOML file or one of`},
		{[]string{"train", "tiny", "--set", "steps=zero", "--dry-run"}, `--set steps=zero: train.steps = "zero": expected an integer`},
		{[]string{"train", "tiny", "--set", "lrr=1", "--dry-run"}, `unknown key "lrr" (did you mean optim.lr?)`},
		{[]string{"train", "--resume"}, "--resume needs --out DIR"},
		{[]string{"train"}, "name a config"},
	} {
		code, _, errOut := runCLI(tc.args...)
		if code != 1 || !strings.Contains(errOut, tc.want) || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
			t.Errorf("%v: exit %d, stderr %q; want one line with %q", tc.args, code, errOut, tc.want)
		}
	}
	p := filepath.Join(t.TempDir(), "bad.toml")
	_ = os.WriteFile(p, []byte("name = \"bad\"\n[optim]\nlr = -1\n"), 0o644)
	code, _, errOut := runCLI("train", p, "--dry-run")
	if code != 1 || !strings.Contains(errOut, p+":3: optim.lr = -1: expected > 0") {
		t.Errorf("file:line: %d %q", code, errOut)
	}
}

func TestTrainWithFakeRunner(t *testing.T) {
	f := &fakeTrainRunner{}
	o, out, errb := newTestTrain(f, 2, false)
	o.Out = t.TempDir()
	if err := o.run(context.Background(), "tiny"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"trained mdn-tiny: steps 2/2, loss 4.5000 -> 3.5000", "throughput: 2.0k tokens/s (1.0k per GPU, 2 process(es)",
		"MFU 25.0%", "peak memory: 3.00 GB"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errb.String(), "step 2/200  loss 3.5000") || !strings.Contains(errb.String(), "launch: torchrun, 2 process(es) on cuda") {
		t.Errorf("progress lines:\n%s", errb)
	}
	if f.opts.Args[0] != "-m" || f.opts.Args[1] != "torch.distributed.run" {
		t.Errorf("not launched with torchrun: %v", f.opts.Args)
	}
	rows, err := train.ReadMetrics(filepath.Join(o.Out, train.MetricsFile))
	if err != nil || len(rows) != 2 {
		t.Errorf("metrics: %v %v", rows, err)
	}

	o, out, _ = newTestTrain(&fakeTrainRunner{}, 0, true)
	o.Out = t.TempDir()
	if err := o.run(context.Background(), "tiny"); err != nil {
		t.Fatal(err)
	}
	var res struct {
		OutDir string         `json:"out_dir"`
		Result map[string]any `json:"result"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.Result["final_loss"] != 3.5 {
		t.Errorf("--json: %v %s", err, out)
	}

	o, _, _ = newTestTrain(&fakeTrainRunner{err: &launcher.JobError{Kind: "unavailable", Message: "mixer 'kda' needs flash-linear-attention"}}, 0, false)
	o.Out = t.TempDir()
	err = o.run(context.Background(), "tiny")
	var ue *userError
	if !errors.As(err, &ue) || err.Error() != "train: unavailable: mixer 'kda' needs flash-linear-attention" {
		t.Errorf("unavailable: %v", err)
	}
}

// The acceptance run on the real runner (CPU): `train tiny --set steps=30 --out DIR` stopped at step 15
// (as Ctrl-C does), then `--resume` finishes it: metrics.jsonl holds steps 1..30 once each and the loss at the
// end is clearly below the start.
func TestTrainTinyStopAndResumeIntegration(t *testing.T) {
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
	if err := exec.Command(py, "-c", "import mdn.train, torch").Run(); err != nil {
		t.Skipf("%s cannot import mdn.train: %v", py, err)
	}
	abs, _ := filepath.Abs(py)
	dir := filepath.Join(t.TempDir(), "tiny")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o, _, errb := newTestTrain(launcher.OneShot{}, 0, false)
	o.findPython = func() (string, string, error) { return abs, "test", nil }
	o.Out, o.Sets = dir, []string{"steps=30"}
	o.onMetric = func(m train.Metric) {
		if m.Step >= 15 {
			cancel()
		}
	}
	err := o.run(ctx, "tiny")
	if !errors.Is(err, train.ErrInterrupted) {
		t.Fatalf("first run: %v\n%s", err, errb)
	}
	ck, ok := train.LatestCheckpoint(dir)
	if !ok || ck < 15 || ck >= 30 {
		t.Fatalf("checkpoint after the stop: %d %v\n%s", ck, ok, errb)
	}
	o2, out, errb2 := newTestTrain(launcher.OneShot{}, 0, false)
	o2.findPython = o.findPython
	o2.Out, o2.Sets, o2.Resume = dir, []string{"steps=30"}, true
	if err := o2.run(context.Background(), "tiny"); err != nil {
		t.Fatalf("resume: %v\n%s", err, errb2)
	}
	rows, err := train.ReadMetrics(filepath.Join(dir, train.MetricsFile))
	if err != nil || len(rows) != 30 {
		t.Fatalf("metrics rows: %d %v", len(rows), err)
	}
	for i, r := range rows {
		if r["step"] != float64(i+1) {
			t.Fatalf("row %d has step %v", i, r["step"])
		}
	}
	first, last := rows[0]["loss"].(float64), rows[29]["loss"].(float64)
	if !(last < first-1.5) {
		t.Errorf("loss %.3f -> %.3f: not clearly lower", first, last)
	}
	if !strings.Contains(out.String(), "steps 30/30") {
		t.Errorf("summary: %s", out)
	}
	if !strings.Contains(errb2.String(), fmt.Sprintf("step %d/30", ck+1)) {
		t.Errorf("the resumed run should start at step %d:\n%s", ck+1, errb2)
	}
}

// torchrun with two CPU ranks (gloo, DDP): rank 0's events arrive through torchrun's stdout, the other rank is
// silent, and the run completes with world size 2.
func TestTrainTorchrunTwoCPURanksIntegration(t *testing.T) {
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
	if err := exec.Command(py, "-c", "import mdn.train, torch.distributed.run").Run(); err != nil {
		t.Skipf("%s cannot import mdn.train / torchrun: %v", py, err)
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	abs, _ := filepath.Abs(py)
	o, out, errb := newTestTrain(launcher.OneShot{}, 0, false)
	o.findPython = func() (string, string, error) { return abs, "test", nil }
	o.Out = filepath.Join(t.TempDir(), "ddp")
	o.Sets = []string{"steps=4", "device=cpu", "nproc_per_node=2", "ckpt_every=0"}
	if err := o.run(context.Background(), "tiny"); err != nil {
		t.Fatalf("%v\n%s", err, errb)
	}
	if !strings.Contains(errb.String(), "launch: torchrun, 2 process(es) on cpu") || !strings.Contains(out.String(), "2 process(es)") {
		t.Errorf("output:\n%s\n%s", errb, out)
	}
	rows, err := train.ReadMetrics(filepath.Join(o.Out, train.MetricsFile))
	if err != nil || len(rows) != 4 {
		t.Errorf("metrics: %d rows (one per step from rank 0 only), %v", len(rows), err)
	}
	b, _ := os.ReadFile(filepath.Join(o.Out, train.ResultFile))
	var res map[string]any
	if json.Unmarshal(b, &res) != nil || res["world_size"] != 2.0 || res["strategy"] != "ddp" {
		t.Errorf("result: %s", b)
	}
}

func TestTrainSummaryWithoutSteadyStateRate(t *testing.T) {
	var b strings.Builder
	printTrainSummary(&b, &train.Outcome{OutDir: "/tmp/x", Result: map[string]any{
		"name": "mdn-tiny", "steps_done": 3.0, "steps": 3.0, "first_loss": 5.0, "final_loss": 4.0,
		"tokens_per_s": nil, "world_size": 1.0, "device": "cpu", "precision": "fp32"}})
	if !strings.Contains(b.String(), "throughput: n/a (no step after the warm-up steps") || strings.Contains(b.String(), "0 tokens/s") {
		t.Errorf("summary:\n%s", b.String())
	}
}
