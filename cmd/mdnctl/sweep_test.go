package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/results"
	"github.com/mdnctl/mdnctl/sweep"
	"github.com/mdnctl/mdnctl/sweeps"
)

// fakeSweepRunner answers probes and points without Python: op "gdn" is unavailable, op "kda" crashes the
// worker, everything else is ok with a time that depends on T.
type fakeSweepRunner struct {
	mu     sync.Mutex
	starts []string // slot names, one per worker started
	jobs   int
}

func (f *fakeSweepRunner) start(python string) sweep.StartFunc {
	return func(slot sweep.Slot, stderr io.Writer) (sweep.Worker, error) {
		f.mu.Lock()
		f.starts = append(f.starts, slot.Name)
		f.mu.Unlock()
		return &fakeSweepWorker{f: f, slot: slot, stderr: stderr}, nil
	}
}

type fakeSweepWorker struct {
	f      *fakeSweepRunner
	slot   sweep.Slot
	stderr io.Writer
	dead   bool
}

func (w *fakeSweepWorker) Do(ctx context.Context, spec launcher.Spec) (*launcher.Outcome, error) {
	if w.dead {
		return nil, launcher.ErrWorkerDead
	}
	p := spec.Params
	if p["probe"] == true {
		b, _ := json.Marshal(map[string]any{"device_name": "Fake GPU " + w.slot.GPU, "versions": map[string]any{"torch": "fake"},
			"import_s": 0.5, "job_start_t": float64(time.Now().UnixNano()) / 1e9})
		return &launcher.Outcome{Result: b, Host: "fake"}, nil
	}
	w.f.mu.Lock()
	w.f.jobs++
	w.f.mu.Unlock()
	switch p["op"] {
	case "gdn":
		return &launcher.Outcome{}, &launcher.JobError{Job: spec.ID, Kind: "unavailable", Message: "fla is not installed"}
	case "kda":
		fmt.Fprintln(w.stderr, "Fatal Python error: Segmentation fault")
		w.dead = true
		return nil, &launcher.ExitError{Job: spec.ID, Code: -1, Signal: "segmentation fault"}
	}
	ms := float64(p["T"].(int64)) / 1000
	b, _ := json.Marshal(map[string]any{"median_ms": ms, "p20_ms": ms, "p80_ms": ms, "tokens_per_s": 1e6 / ms,
		"peak_mem_gib": 0.25, "timed_s": 0.01, "job_timing": map[string]any{"job_s": 0.02}, "check": map[string]any{"passed": true}})
	return &launcher.Outcome{Result: b, Host: "fake"}, nil
}

func (w *fakeSweepWorker) Close() error { w.dead = true; return nil }

// fakePy is an interpreter path that exists; the fake runner never starts it.
var fakePy = func() string {
	p, err := exec.LookPath("sh")
	if err != nil {
		return "/bin/sh"
	}
	return p
}()

func withFakeSweep(t *testing.T, gpus []string) *fakeSweepRunner {
	t.Helper()
	f := &fakeSweepRunner{}
	oldStart, oldDetect := sweepStart, sweepDetectGPUs
	sweepStart = f.start
	sweepDetectGPUs = func(context.Context) []string { return gpus }
	t.Cleanup(func() { sweepStart, sweepDetectGPUs = oldStart, oldDetect })
	return f
}

const cliSweep = `name = "cli"
where = "not (op == 'kda' and T == 64)"
[axes]
op = ["mdn", "kda", "gdn"]
T = [32, 64]
shape = [{B = 1, H = 2, K = 16, V = 16}]
[derive]
tokens = "B * T"
`

func writeSweep(t *testing.T, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "s.toml")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSweepPlan(t *testing.T) {
	path := writeSweep(t, cliSweep)
	code, out, errOut := runCLI("sweep", "--plan", path)
	if code != 0 || errOut != "" || !strings.Contains(out, "cli ("+path+"): 5 points (1 dropped by where, 3 variants") ||
		strings.Count(out, "mdn") != 2 || !strings.Contains(out, "tokens") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	code, out, _ = runCLI("sweep", "--plan", "--json", path)
	var pts []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &pts) != nil || len(pts) != 5 {
		t.Fatalf("json: exit %d %s", code, out)
	}
	for _, k := range []string{"point", "variant", "op", "T", "B", "tokens", "chunk_size", "dtype", "mode", "repeat", "index"} {
		if _, ok := pts[0][k]; !ok {
			t.Errorf("plan JSON point lacks %s: %v", k, pts[0])
		}
	}
	// The shipped sweeps all expand; the default is the embedded demo.
	for _, name := range sweeps.Names() {
		if code, out, errOut := runCLI("sweep", "--plan", "--json", strings.TrimSuffix(name, ".toml")); code != 0 {
			t.Errorf("%s: exit %d %s %s", name, code, out, errOut)
		}
	}
	code, out, _ = runCLI("sweep", "--plan")
	if code != 0 || !strings.HasPrefix(out, "demo (sweeps/demo.toml): ") {
		t.Errorf("default: %d %s", code, out)
	}
}

// The embedded demo is the file in sweeps/.
func TestEmbeddedDemoIsTheFile(t *testing.T) {
	disk, err := os.ReadFile(filepath.Join("..", "..", "sweeps", "demo.toml"))
	if err != nil {
		t.Fatal(err)
	}
	emb, _ := sweeps.Lookup("demo")
	if string(disk) != string(emb) {
		t.Fatal("embedded demo differs from sweeps/demo.toml: rebuild")
	}
}

// The baselines sweep is the comparison: bf16, B*T = 32768, T in {2048, 4096, 8192}, both head shapes,
// fwd and fwdbwd, every baseline.
func TestBaselinesShape(t *testing.T) {
	code, out, errOut := runCLI("sweep", "--plan", "--json", filepath.Join("..", "..", "sweeps", "baselines.toml"))
	if code != 0 {
		t.Fatal(errOut)
	}
	var pts []map[string]any
	json.Unmarshal([]byte(out), &pts)
	seen := map[string]bool{}
	for _, p := range pts {
		if p["dtype"] != "bfloat16" || p["B"].(float64)*p["T"].(float64) != 32768 {
			t.Fatalf("point %v", p)
		}
		seen[fmt.Sprintf("%v/%v/%v/%v/%v/%v", p["op"], p["T"], p["H"], p["K"], p["V"], p["mode"])] = true
	}
	for _, op := range sweep.Ops {
		if op == "mdn_recurrent" || op == "mdn_naive" {
			continue
		}
		for _, T := range []int{2048, 4096, 8192} {
			for _, hkv := range []string{"6/256/512", "16/128/128"} {
				for _, mode := range []string{"fwd", "fwdbwd"} {
					key := fmt.Sprintf("%s/%d/%s/%s", op, T, hkv, mode)
					if !seen[key] && !(op == "sdpa" && hkv == "6/256/512") {
						t.Errorf("baselines lacks %s", key)
					}
				}
			}
		}
	}
}

func TestSweepErrorsAreOneLineWithFileLine(t *testing.T) {
	path := writeSweep(t, "[axes]\nop = ['mdn']\nT = [64, 'x']\nB=1\nH=1\nK=1\nV=1\n")
	code, out, errOut := runCLI("sweep", path)
	if code != 1 || out != "" || !strings.HasPrefix(errOut, "mdnctl: "+path+":3: axes.T[1]: T must be an integer") ||
		strings.Contains(errOut, "Traceback") || strings.Contains(errOut, "Usage") {
		t.Fatalf("exit %d stdout %q stderr %q", code, out, errOut)
	}
	code, _, errOut = runCLI("sweep", "nope")
	if code != 1 || !strings.Contains(errOut, "no sweep file nope (shipped sweeps: baselines, chunk_sizes, demo, gating") {
		t.Fatalf("missing file: %d %q", code, errOut)
	}
	code, _, errOut = runCLI("sweep", "--rerun", "xyz!", path)
	if code != 1 || !strings.Contains(errOut, "--rerun") {
		t.Fatalf("bad rerun: %d %q", code, errOut)
	}
}

func readRowsT(t *testing.T, dir string) []results.Row {
	t.Helper()
	rows, info, err := results.Read(filepath.Join(dir, results.FileName))
	if err != nil || info.TornTail || len(info.BadLines) > 0 {
		t.Fatal(err, info)
	}
	return rows
}

func TestSweepRunResumeRerun(t *testing.T) {
	fake := withFakeSweep(t, nil)
	path := writeSweep(t, cliSweep)
	out := t.TempDir()
	code, stdout, errOut := runCLI("sweep", path, "--out", out, "--python", fakePy)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, errOut)
	}
	rows := readRowsT(t, out)
	st := map[string]int{}
	for _, r := range rows {
		st[results.Str(r, "status")]++
		if r["slot"] != "cpu" || r["device"] == "" || r["tokens"] == nil {
			t.Errorf("row %v", r)
		}
	}
	if len(rows) != 5 || st["ok"] != 2 || st["unavailable"] != 2 || st["failed"] != 1 {
		t.Fatalf("statuses %v", st)
	}
	if !strings.Contains(stdout, "cli: 5 points run") || !strings.Contains(stdout, "2 ok, 1 failed, 2 unavailable") ||
		!strings.Contains(stdout, "launcher overhead: worker spawn") {
		t.Errorf("summary:\n%s", stdout)
	}
	if !strings.Contains(errOut, "[5/5]") || !strings.Contains(errOut, "segmentation fault") {
		t.Errorf("progress lines:\n%s", errOut)
	}
	// The crash restarted the worker: 2 starts (the failed point's stderr is in its row).
	if len(fake.starts) != 2 {
		t.Errorf("worker starts %v", fake.starts)
	}
	// Resume: nothing to do, no worker started.
	jobs, starts := fake.jobs, len(fake.starts)
	code, stdout, _ = runCLI("sweep", path, "--out", out, "--resume", "--python", fakePy)
	if code != 0 || !strings.Contains(stdout, "all 5 points already have rows") || fake.jobs != jobs || len(fake.starts) != starts {
		t.Fatalf("resume: %d %q jobs %d->%d", code, stdout, jobs, fake.jobs)
	}
	// --retry-failed runs the crashed point again.
	code, _, _ = runCLI("sweep", path, "--out", out, "--resume", "--retry-failed", "-q", "--python", fakePy)
	if code != 0 || fake.jobs != jobs+1 || len(readRowsT(t, out)) != 6 {
		t.Fatalf("retry-failed: %d jobs %d rows %d", code, fake.jobs-jobs, len(readRowsT(t, out)))
	}
	// --rerun a variant: mdn's two points.
	variant := ""
	for _, r := range rows {
		if r["op"] == "mdn" {
			variant = results.Str(r, "variant")
		}
	}
	code, _, _ = runCLI("sweep", path, "--out", out, "--rerun", variant[:6], "-q", "--python", fakePy)
	if code != 0 || len(readRowsT(t, out)) != 8 {
		t.Fatalf("rerun: %d rows %d", code, len(readRowsT(t, out)))
	}
	// Without --resume the old rows move aside and the sweep starts afresh.
	code, _, errOut = runCLI("sweep", path, "--out", out, "-q", "--python", fakePy)
	prev, _ := filepath.Glob(filepath.Join(out, "results.jsonl.prev-*"))
	if code != 0 || len(readRowsT(t, out)) != 5 || len(prev) != 1 {
		t.Fatalf("fresh: %d rows %d prev %v %s", code, len(readRowsT(t, out)), prev, errOut)
	}
}

func TestSweepGPUsAndJSON(t *testing.T) {
	fake := withFakeSweep(t, []string{"0", "1"})
	path := writeSweep(t, strings.Replace(cliSweep, `op = ["mdn", "kda", "gdn"]`, `op = ["mdn", "ssd"]`, 1))
	out := t.TempDir()
	code, stdout, errOut := runCLI("sweep", path, "--out", out, "--json", "--python", fakePy)
	if code != 0 {
		t.Fatal(errOut)
	}
	var doc struct {
		Summary sweep.Summary `json:"summary"`
		Rows    []results.Row `json:"rows"`
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil || doc.Summary.Ran != 4 || len(doc.Rows) != 4 {
		t.Fatalf("json %v %s", err, stdout)
	}
	if len(fake.starts) != 2 || !strings.Contains(strings.Join(fake.starts, ","), "gpu0") || !strings.Contains(strings.Join(fake.starts, ","), "gpu1") {
		t.Fatalf("starts %v", fake.starts)
	}
	for _, r := range readRowsT(t, out) {
		if g := r["gpu"]; g != "0" && g != "1" {
			t.Errorf("gpu %v", g)
		}
		if p, _ := r["params"].(map[string]any); p["device"] != "cuda" {
			t.Errorf("device %v", p["device"])
		}
	}
	if code, _, errOut := runCLI("sweep", path, "--out", t.TempDir(), "--gpus", "3", "--python", fakePy); code != 1 || !strings.Contains(errOut, "GPU 3 not found") {
		t.Fatalf("bad gpu: %d %s", code, errOut)
	}
	code, _, _ = runCLI("sweep", path, "--out", t.TempDir(), "--gpus", "cpu", "-q", "--python", fakePy)
	if code != 0 || fake.starts[len(fake.starts)-1] != "cpu" {
		t.Fatalf("cpu: %v", fake.starts)
	}
}

func TestSweepMaxTime(t *testing.T) {
	withFakeSweep(t, nil)
	path := writeSweep(t, cliSweep)
	out := t.TempDir()
	code, _, errOut := runCLI("sweep", path, "--out", out, "--max-time", "1ns", "-q", "--python", fakePy)
	if code != 0 || !strings.Contains(errOut, "stopped after --max-time") || len(readRowsT(t, out)) != 0 {
		t.Fatalf("%d %s", code, errOut)
	}
}

// Only one sweep writes a results directory at a time.
func TestSweepLocked(t *testing.T) {
	withFakeSweep(t, nil)
	path := writeSweep(t, cliSweep)
	out := t.TempDir()
	w, _, err := results.Open(filepath.Join(out, results.FileName))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	code, _, errOut := runCLI("sweep", path, "--out", out, "--python", fakePy)
	if code != 1 || !strings.Contains(errOut, "being written by another mdnctl sweep") {
		t.Fatalf("%d %s", code, errOut)
	}
}

// The demo sweep on the real runner (CPU, Triton interpreter): every point ok, rows complete; a second run with
// --resume does nothing. Skipped without the repository's .venv.
func TestSweepDemoIntegration(t *testing.T) {
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
	if err := exec.Command(py, "-c", "import mdn.bench.registry, torch, triton").Run(); err != nil {
		t.Skipf("%s cannot import mdn.bench: %v", py, err)
	}
	abs, _ := filepath.Abs(py)
	out := t.TempDir()
	start := time.Now()
	code, stdout, errOut := runCLI("sweep", "--out", out, "--gpus", "cpu", "--python", abs)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, errOut)
	}
	if d := time.Since(start); d > 90*time.Second {
		t.Errorf("demo took %s; it should stay under a minute", d)
	}
	rows := readRowsT(t, out)
	f, _ := loadSweep(nil)
	plan, _ := f.Expand()
	if len(rows) != len(plan.Points) {
		t.Fatalf("%d rows for %d points", len(rows), len(plan.Points))
	}
	for _, r := range rows {
		if results.Str(r, "status") != "ok" {
			t.Errorf("%v %v: %v %v", r["op"], r["mode"], r["status"], r["reason"])
			continue
		}
		chk, _ := r["check"].(map[string]any)
		if chk["passed"] != true || r["median_ms"].(float64) <= 0 || r["versions"].(map[string]any)["torch"] == nil {
			t.Errorf("row %v", r)
		}
		if oh := r["overhead"].(map[string]any); oh["wall_s"].(float64) <= 0 {
			t.Errorf("overhead %v", oh)
		}
	}
	code, stdout, _ = runCLI("sweep", "--out", out, "--gpus", "cpu", "--resume", "--python", abs)
	if code != 0 || !strings.Contains(stdout, "nothing to run") {
		t.Fatalf("resume: %d %s", code, stdout)
	}
}

// --backend slurm: the file's [slurm] table is checked with file:line, a dry run shows the array, a submission
// goes to the (fake) Slurm with only the points that have no row.
func TestSweepSlurmBackend(t *testing.T) {
	withFakeSlurm(t)
	src := cliSweep + "[slurm]\npartition = \"gpu\"\ngpus = 1\ntime = \"01:00:00\"\nconcurrency = 2\n"
	path := writeSweep(t, src)
	out := t.TempDir()
	code, stdout, errOut := runCLI("sweep", path, "--backend", "slurm", "--dry-run", "--out", out, "--python", fakePy)
	if code != 0 || !strings.Contains(stdout, "# dry run") || !strings.Contains(stdout, "5 points in") ||
		!strings.Contains(stdout, "run-shard") {
		t.Fatalf("dry run: %d\n%s\n%s", code, stdout, errOut)
	}
	code, stdout, errOut = runCLI("sweep", path, "--backend", "slurm", "--out", out, "--python", fakePy)
	if code != 0 || !strings.Contains(stdout, "submitted cli: job") || !strings.Contains(stdout, "5 points") {
		t.Fatalf("submit: %d\n%s\n%s", code, stdout, errOut)
	}
	bad := writeSweep(t, cliSweep+"[slurm]\ntime = \"2h\"\n")
	code, _, errOut = runCLI("sweep", bad, "--plan")
	if code != 1 || !strings.Contains(errOut, "slurm.time") {
		t.Fatalf("bad [slurm]: %d %s", code, errOut)
	}
}
