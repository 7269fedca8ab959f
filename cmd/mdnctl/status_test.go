package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/slurm"
	"github.com/mdnctl/mdnctl/slurm/slurmtest"
)

// withFakeSlurm swaps the Slurm runner for an in-memory queue for one test.
func withFakeSlurm(t *testing.T) *slurmtest.Fake {
	t.Helper()
	f := &slurmtest.Fake{}
	old := slurmRunner
	slurmRunner = f
	t.Cleanup(func() { slurmRunner = old })
	return f
}

func slurmCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := execute(args, &out, &errb)
	return out.String(), errb.String(), code
}

// fakeSweep submits a 6-point sweep (3 tasks, 2 at a time) to the fake; tasks 0 and 1 ran (one point failed).
func fakeSweep(t *testing.T, f *slurmtest.Fake) (string, slurm.Submission) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "demo")
	var pts []slurm.Point
	for _, id := range []string{"p0", "p1", "p2", "p3", "p4", "p5"} {
		pts = append(pts, slurm.Point{ID: id, Spec: launcher.Spec{Kind: "echo"}})
	}
	plan, sub, err := slurm.SubmitSweep(context.Background(), f, slurm.SweepSubmission{Name: "demo", OutDir: out,
		Points: pts, Config: slurm.Config{Concurrency: 2, Shards: 3}, Binary: "/b/mdnctl", Python: "/p/python"})
	if err != nil {
		t.Fatal(err)
	}
	w, err := slurm.OpenRows(filepath.Join(out, "results."+sub.JobID+"_0.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	_ = w.Append(map[string]any{"point": plan.Shards[0][0].ID, "status": "ok"})
	_ = w.Append(map[string]any{"point": plan.Shards[0][1].ID, "status": "failed", "error": "boom on purpose"})
	w.Close()
	f.Set(sub.JobID, 0, "COMPLETED", 0)
	f.Set(sub.JobID, 1, "RUNNING", 0)
	return out, sub
}

func TestStatusCommand(t *testing.T) {
	f := withFakeSlurm(t)
	dir, sub := fakeSweep(t, f)
	stdout, stderr, code := slurmCLI(t, "status", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"sweep RUNNING: 2/6 points done (1 failed, 1 ok), 4 pending",
		"job " + sub.JobID + " (array of 3 task(s), 6 point(s), 2 at a time): 1 COMPLETED, 1 PENDING, 1 RUNNING",
		"p3", "boom on purpose"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status output lacks %q:\n%s", want, stdout)
		}
	}
	stdout, _, code = slurmCLI(t, "status", dir, "--json")
	var js []slurm.RunStatus
	if code != 0 || json.Unmarshal([]byte(stdout), &js) != nil || len(js) != 1 || js[0].State != "RUNNING" || js[0].Points.Pending != 4 {
		t.Fatalf("status --json (exit %d): %s", code, stdout)
	}
	// A job id.
	stdout, _, code = slurmCLI(t, "status", sub.JobID)
	if code != 0 || !strings.Contains(stdout, "RUNNING") || !strings.Contains(stdout, "JobArrayTaskLimit") {
		t.Fatalf("status JOBID (exit %d):\n%s", code, stdout)
	}
	// Not a run directory: one clear line.
	_, stderr, code = slurmCLI(t, "status", filepath.Join(t.TempDir(), "nope"))
	if code == 0 || !strings.Contains(stderr, "no such run directory or job id") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("bad argument (exit %d): %q", code, stderr)
	}
	empty := t.TempDir()
	_, stderr, code = slurmCLI(t, "status", empty)
	if code == 0 || !strings.Contains(stderr, "no Slurm submission recorded here") {
		t.Fatalf("directory without submissions (exit %d): %q", code, stderr)
	}
}

func TestCancelCommand(t *testing.T) {
	f := withFakeSlurm(t)
	dir, sub := fakeSweep(t, f)
	stdout, stderr, code := slurmCLI(t, "cancel", dir, "--wait", "5s")
	if code != 0 || !strings.Contains(stdout, "cancelled job(s) "+sub.JobID) {
		t.Fatalf("cancel (exit %d): %s %s", code, stdout, stderr)
	}
	if n := f.Count("scancel"); n != 1 {
		t.Fatalf("%d scancel calls", n)
	}
	stdout, _, _ = slurmCLI(t, "status", dir)
	if !strings.Contains(stdout, "sweep INCOMPLETE") || !strings.Contains(stdout, "4 point(s) have no row") {
		t.Fatalf("status after cancel:\n%s", stdout)
	}
	// Nothing left to cancel: says so, scancel is not run again.
	_, stderr, code = slurmCLI(t, "cancel", dir)
	if code != 0 || !strings.Contains(stderr, "no queued or running job") || f.Count("scancel") != 1 {
		t.Fatalf("second cancel (exit %d): %q", code, stderr)
	}
}

func TestRunShardCommand(t *testing.T) {
	py, _, err := launcher.FindPython("", findRepoRoot())
	if err != nil {
		t.Skipf("no Python: %v", err)
	}
	t.Setenv("MDN_PYTHON", py)
	dir := t.TempDir()
	shard := filepath.Join(dir, "shard.jsonl")
	lines := `{"point":"a","spec":{"v":1,"id":"a","kind":"echo","params":{}},"row":{"variant":"va"}}
{"point":"b","spec":{"v":1,"id":"b","kind":"echo","params":{"fail":"boom"}}}
`
	if err := os.WriteFile(shard, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "results.5_0.jsonl")
	_, stderr, code := slurmCLI(t, "run-shard", "--shard-file", shard, "--out", out)
	if code != 0 {
		t.Fatalf("run-shard (exit %d): %s", code, stderr)
	}
	done, err := slurm.DonePoints(dir)
	if err != nil || done["a"] != "ok" || done["b"] != "failed" {
		t.Fatalf("rows: %v %v", done, err)
	}
	// --fail-exit (training ranks): a failed point is exit 1.
	if _, _, code := slurmCLI(t, "run-shard", "--shard-file", shard, "--out", filepath.Join(dir, "x.jsonl"), "--fail-exit"); code != 1 {
		t.Fatalf("--fail-exit with a failed point: exit %d", code)
	}
}
