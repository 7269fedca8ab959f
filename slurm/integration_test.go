package slurm_test

// Against a real Slurm: scripts/slurm-up.sh (as root) starts a single-node cluster with two fake GPUs, then
//   MDN_SLURM_TEST=1 go test ./slurm -run Integration -v
// The test builds mdnctl, runs a 12-point CPU sweep as an array (2 at a time) with one point failing on purpose,
// cancels it part-way with `mdnctl cancel`, resumes it, checks every point has exactly one row and the failure is
// reported by `mdnctl status`, then runs a 2-process torchrun job (gloo all-reduce) under sbatch.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/slurm"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

type integ struct {
	t    *testing.T
	repo string
	bin  string
	py   string
	r    slurm.Runner
}

func setupIntegration(t *testing.T) *integ {
	if os.Getenv("MDN_SLURM_TEST") != "1" {
		t.Skip("real-Slurm integration test skipped: start a cluster with scripts/slurm-up.sh (root) and set MDN_SLURM_TEST=1")
	}
	for _, c := range []string{"sbatch", "squeue", "scancel", "scontrol", "srun", "sinfo"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("MDN_SLURM_TEST=1 but %s is not on PATH: run scripts/slurm-up.sh first", c)
		}
	}
	if out, err := exec.Command("sinfo", "-h", "-o", "%t").Output(); err != nil || !strings.Contains(string(out), "idle") && !strings.Contains(string(out), "mix") {
		t.Fatalf("MDN_SLURM_TEST=1 but no idle Slurm node (sinfo: %q, %v): run scripts/slurm-up.sh", out, err)
	}
	wd, _ := os.Getwd()
	repo := launcher.FindRepoRoot(wd)
	if repo == "" {
		t.Fatal("cannot find the repository root")
	}
	py, _, err := launcher.FindPython("", repo)
	if err != nil {
		t.Fatal(err)
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mdnctl-slurm-test")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "mdnctl")
		build := exec.Command("go", "build", "-o", builtBin, "./cmd/mdnctl")
		build.Dir = repo
		if out, err := build.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	bin := builtBin
	return &integ{t: t, repo: repo, bin: bin, py: py, r: slurm.ExecRunner{}}
}

// workDir is a fresh temporary directory, or MDN_SLURM_TEST_KEEP/<test> (kept, for looking at the scripts,
// logs and rows afterwards).
func workDir(t *testing.T) string {
	keep := os.Getenv("MDN_SLURM_TEST_KEEP")
	if keep == "" {
		return t.TempDir()
	}
	d := filepath.Join(keep, t.Name())
	if err := os.RemoveAll(d); err != nil {
		t.Fatal(err)
	}
	return d
}

// cli runs the built mdnctl and returns stdout.
func (it *integ) cli(args ...string) string {
	it.t.Helper()
	cmd := exec.Command(it.bin, args...)
	cmd.Env = append(os.Environ(), "MDN_PYTHON="+it.py)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		it.t.Fatalf("mdnctl %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func (it *integ) logs(dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "slurm", "logs", "*.out"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		it.t.Logf("--- %s\n%s", filepath.Base(f), b)
	}
}

func echoPoints(n int, fail string) []slurm.Point {
	var pts []slurm.Point
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("p%02d", i)
		params := map[string]any{"steps": 2, "sleep": 0.6, "i": i}
		if id == fail {
			params["fail"] = "boom on purpose"
		}
		row, _ := json.Marshal(map[string]any{"sweep": "integration", "i": i})
		pts = append(pts, slurm.Point{ID: id, Spec: launcher.Spec{Kind: "echo", Params: params}, Row: row})
	}
	return pts
}

func TestIntegrationSweepCancelResume(t *testing.T) {
	it := setupIntegration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out := filepath.Join(workDir(t), "results", "integration")
	cfg := slurm.Config{Concurrency: 2, Shards: 6, GPUs: 1, Time: "10", PointTimeout: "60s"}
	plan, sub, err := slurm.SubmitSweep(ctx, it.r, slurm.SweepSubmission{
		Name: "integration", OutDir: out, Points: echoPoints(12, "p05"), Config: cfg, Binary: it.bin, Python: it.py,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			it.logs(out)
		}
		_ = slurm.Cancel(context.Background(), it.r, []string{sub.JobID})
	}()
	if !strings.Contains(plan.Script, "#SBATCH --array=0-5%2") || !strings.Contains(plan.Script, "#SBATCH --gres=gpu:1") {
		t.Fatalf("script lacks the array/gres directives:\n%s", plan.Script)
	}

	// Let part of it run, then cancel through the CLI.
	deadline := time.Now().Add(90 * time.Second)
	for {
		done, err := slurm.DonePoints(out)
		if err != nil {
			t.Fatal(err)
		}
		if len(done) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no rows after 90 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("cancel: %s", strings.TrimSpace(it.cli("cancel", out, "--wait", "60s")))

	st, err := slurm.Status(ctx, it.r, out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Active || st.State != "INCOMPLETE" || st.Points.Pending == 0 || st.Points.Done == 0 {
		t.Fatalf("after cancel: want an inactive INCOMPLETE sweep with some points done and some pending, got %s active=%v points=%+v",
			st.State, st.Active, *st.Points)
	}
	pending := st.Points.Pending
	t.Logf("after cancel: %d done, %d pending; tasks %v", st.Points.Done, pending, st.Submissions[0].Counts)

	// Resume: only the points without a row, as a new array.
	plan2, sub2, err := slurm.ResumeSweep(ctx, it.r, out, slurm.ResumeOptions{
		Config: slurm.Config{Concurrency: 2, Shards: 3, Time: "10"}, Binary: it.bin, Python: it.py})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = slurm.Cancel(context.Background(), it.r, []string{sub2.JobID}) }()
	if n := len(plan2.Sub.Points); n != pending {
		t.Fatalf("resume submitted %d points, want the %d pending", n, pending)
	}
	if err := slurm.WaitRun(ctx, it.r, out, time.Second, nil); err != nil {
		t.Fatal(err)
	}

	st, err = slurm.Status(ctx, it.r, out)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != "DONE" || st.Points.Done != 12 || st.Points.Status["failed"] != 1 || st.Points.Status["ok"] != 11 {
		t.Fatalf("after resume: got %s %+v", st.State, *st.Points)
	}
	if len(st.Failures) != 1 || st.Failures[0].Point != "p05" || !strings.Contains(st.Failures[0].Message, "boom on purpose") {
		t.Fatalf("failures: %+v", st.Failures)
	}
	rows, err := slurm.ReadRows(out)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, r := range rows {
		seen[slurm.RowString(r, "point")]++
	}
	if len(rows) != 12 || len(seen) != 12 {
		t.Fatalf("want 12 rows for 12 distinct points (no loss, no duplicate), got %d rows: %v", len(rows), seen)
	}
	files, _ := slurm.RowFiles(out)
	jobs := map[string]bool{}
	for _, f := range files {
		jobs[strings.SplitN(strings.TrimPrefix(filepath.Base(f), "results."), "_", 2)[0]] = true
	}
	if len(jobs) != 2 || !jobs[sub.JobID] || !jobs[sub2.JobID] {
		t.Fatalf("rows should come from both arrays (%s, %s), files: %v", sub.JobID, sub2.JobID, files)
	}

	// The CLI reports the failed point.
	human := it.cli("status", out)
	if !strings.Contains(human, "DONE") || !strings.Contains(human, "p05") || !strings.Contains(human, "boom on purpose") {
		t.Fatalf("mdnctl status output lacks the failure:\n%s", human)
	}
	var js []slurm.RunStatus
	if err := json.Unmarshal([]byte(it.cli("status", out, "--json")), &js); err != nil || len(js) != 1 || js[0].Points.Done != 12 {
		t.Fatalf("mdnctl status --json: %v %+v", err, js)
	}
	t.Logf("mdnctl status:\n%s", human)
}

func TestIntegrationTorchrun(t *testing.T) {
	it := setupIntegration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	run := filepath.Join(workDir(t), "runs", "dist")
	spec := &launcher.Spec{Kind: "dist_check", Params: map[string]any{"backend": "gloo", "timeout_s": 60}}
	_, sub, err := slurm.SubmitTrain(ctx, it.r, slurm.TrainSubmission{
		Name: "dist", RunDir: run, Spec: spec, Binary: it.bin, Python: it.py,
		Config: slurm.Config{Nodes: 1, ProcsPerNode: 2, CPUsPerTask: 2, GPUs: 1, Time: "10"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			it.logs(run)
		}
		_ = slurm.Cancel(context.Background(), it.r, []string{sub.JobID})
	}()
	if err := slurm.WaitRun(ctx, it.r, run, time.Second, nil); err != nil {
		t.Fatal(err)
	}
	st, err := slurm.Status(ctx, it.r, run)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != "DONE" {
		t.Fatalf("training job: %s, tasks %+v", st.State, st.Submissions[0].TaskStates)
	}
	ranks := st.Submissions[0].Ranks
	if len(ranks) != 2 {
		t.Fatalf("want rows from 2 ranks, got %+v", ranks)
	}
	for i, r := range ranks {
		var res struct {
			Rank      int     `json:"rank"`
			WorldSize int     `json:"world_size"`
			Sum       float64 `json:"allreduce_sum"`
			Backend   string  `json:"backend"`
		}
		if r.Status != "ok" || json.Unmarshal(r.Result, &res) != nil || res.Rank != i || res.WorldSize != 2 || res.Sum != 3 || res.Backend != "gloo" {
			t.Fatalf("rank %d: %+v %s", i, r, r.Result)
		}
	}
	m, err := os.ReadFile(filepath.Join(run, "metrics.jsonl"))
	if err != nil || !strings.Contains(string(m), `"allreduce_sum":3`) {
		t.Fatalf("rank 0 metrics: %v %q", err, m)
	}
	t.Logf("mdnctl status:\n%s", it.cli("status", run))
}
