package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/results"
	"github.com/mdnctl/mdnctl/slurm"
	"github.com/mdnctl/mdnctl/sweep"
)

// shardFakeWorker answers the sweep executor's probe and points without Python; T=48 fails on purpose.
type shardFakeWorker struct{ slot sweep.Slot }

func (w *shardFakeWorker) Do(ctx context.Context, spec launcher.Spec) (*launcher.Outcome, error) {
	if spec.Params["probe"] == true {
		res, _ := json.Marshal(map[string]any{"device_name": "Fake " + w.slot.Name, "versions": map[string]any{"torch": "0.fake"},
			"import_s": 0.1, "job_start_t": float64(time.Now().UnixNano()) / 1e9})
		return &launcher.Outcome{JobID: spec.ID, Result: res, Host: "node1"}, nil
	}
	if spec.Params["T"] == int64(48) {
		return &launcher.Outcome{JobID: spec.ID}, &launcher.JobError{Job: spec.ID, Kind: "incorrect", Message: "gate failed on purpose"}
	}
	res, _ := json.Marshal(map[string]any{"median_ms": 1.0, "p20_ms": 0.9, "p80_ms": 1.1})
	return &launcher.Outcome{JobID: spec.ID, Result: res, Host: "node1"}, nil
}

func (w *shardFakeWorker) Close() error { return nil }

// A sweep file submitted with SweepFile: the array task expands the kept copy, runs only its shard's points with
// the sweep executor and writes the same rows as a local sweep; a requeued task reruns nothing.
func TestRunShardSweepFileMode(t *testing.T) {
	f := withFakeSlurm(t)
	var started []string
	old := sweepShardStart
	sweepShardStart = func(base launcher.Options) sweep.StartFunc {
		return func(slot sweep.Slot, _ io.Writer) (sweep.Worker, error) {
			started = append(started, slot.Name)
			return &shardFakeWorker{slot: slot}, nil
		}
	}
	t.Cleanup(func() { sweepShardStart = old })
	t.Setenv("MDN_PYTHON", "/bin/sh") // never started: the fake stands in
	t.Setenv("CUDA_VISIBLE_DEVICES", "2,3")

	dir := t.TempDir()
	file := filepath.Join(dir, "small.toml")
	src := "name = \"small\"\ntimeout = \"5s\"\n[axes]\nop = [\"mdn\", \"gdn\"]\nT = [16, 32, 48]\nB = 1\nH = 2\nK = 16\nV = 16\n"
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	sf, err := sweep.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := sf.Expand()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "results", "small")
	sp, sub, err := slurm.SubmitSweep(context.Background(), f, slurm.SweepSubmission{Name: sf.Name, OutDir: out,
		Points: slurmSweepPoints(sf, plan.Points), SweepFile: file, Config: slurm.Config{GPUs: 2, Shards: 2, Concurrency: 1},
		Binary: "/b/mdnctl", Python: "/p/python"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sp.Script, "--sweep-file "+filepath.Join(sp.Dir, "sweep.toml")+" --gpus slurm") {
		t.Fatalf("script:\n%s", sp.Script)
	}
	// Run both array tasks as Slurm would (the arguments of the script's run-shard line).
	for task := 0; task < 2; task++ {
		args := []string{"run-shard", "--shard-file", slurm.ShardFile(sp.Dir, task),
			"--out", filepath.Join(out, "results."+sub.JobID+"_"+string(rune('0'+task))+".jsonl"),
			"--sweep-file", filepath.Join(sp.Dir, "sweep.toml"), "--gpus", "slurm"}
		if _, stderr, code := slurmCLI(t, args...); code != 0 {
			t.Fatalf("task %d: exit %d: %s", task, code, stderr)
		}
		if _, _, code := slurmCLI(t, args...); code != 0 { // requeued: nothing reruns
			t.Fatalf("task %d requeued: exit %d", task, code)
		}
	}
	files, _ := slurm.RowFiles(out)
	rows, err := results.ReadAll(files...)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 6 {
		t.Fatalf("%d rows, want 6 (each point once)", len(rows))
	}
	bad := 0
	for _, r := range rows {
		if results.Str(r, "sweep") != "small" || results.Str(r, "variant") == "" || !strings.HasPrefix(results.Str(r, "device"), "Fake gpu") {
			t.Errorf("row lacks the local sweep's fields: %v", r)
		}
		if results.Str(r, "status") == "incorrect" {
			bad++
		}
	}
	if bad != 2 {
		t.Errorf("%d incorrect rows, want 2 (T=48 for both ops)", bad)
	}
	// One worker per GPU Slurm gave each task (CUDA_VISIBLE_DEVICES=2,3), started once per task (the requeued run
	// has nothing to do).
	if strings.Join(started, ",") == "" || !strings.Contains(strings.Join(started, ","), "gpu3") {
		t.Errorf("slots started: %v", started)
	}
	for i := 0; i < 2; i++ {
		f.Set(sub.JobID, i, "COMPLETED", 0)
	}
	st, err := slurm.Status(context.Background(), f, out)
	if err != nil || st.State != "DONE" || st.Points.Status["incorrect"] != 2 || len(st.Failures) != 2 {
		t.Fatalf("status: %v %+v", err, st)
	}
	if st.Failures[0].Message != "gate failed on purpose" {
		t.Errorf("failure message %q (read from the row's reason)", st.Failures[0].Message)
	}
}
