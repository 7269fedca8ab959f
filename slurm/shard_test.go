package slurm_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/slurm"
)

// pythonRunner returns launcher options for the real python -m mdn.runner (the echo job needs no torch).
func pythonRunner(t *testing.T) launcher.Options {
	t.Helper()
	wd, _ := os.Getwd()
	py, _, err := launcher.FindPython("", launcher.FindRepoRoot(wd))
	if err != nil {
		t.Skipf("no Python for the runner: %v", err)
	}
	if out, err := exec.Command(py, "-c", "import mdn.runner").CombinedOutput(); err != nil {
		t.Fatalf("%s cannot import mdn.runner (run scripts/setup.sh): %v\n%s", py, err, out)
	}
	return launcher.Options{Python: py, Grace: time.Second}
}

func writeShard(t *testing.T, path string, pts []slurm.Point) {
	t.Helper()
	var b strings.Builder
	for _, p := range pts {
		if p.Spec.V == 0 {
			p.Spec.V = launcher.ProtocolVersion
		}
		p.Spec.ID = p.ID
		line, _ := json.Marshal(p)
		b.Write(line)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func echo(id string, params map[string]any) slurm.Point {
	return slurm.Point{ID: id, Spec: launcher.Spec{Kind: "echo", Params: params}, Row: []byte(`{"variant":"v-` + id + `","chunk_size":64}`)}
}

func TestRunShardFailureIsolationAndRequeue(t *testing.T) {
	lo := pythonRunner(t)
	lo.Timeout = 3 * time.Second
	dir := t.TempDir()
	shard := filepath.Join(dir, "shard-0000.jsonl")
	writeShard(t, shard, []slurm.Point{
		echo("ok1", map[string]any{"steps": 2}),
		echo("bad", map[string]any{"fail": "boom on purpose"}),
		echo("raise", map[string]any{"raise": "RuntimeError"}),
		echo("crash", map[string]any{"exit": 3}),
		echo("slow", map[string]any{"steps": 1, "sleep": 30}), // killed by the timeout; the worker is replaced
		echo("ok2", map[string]any{"steps": 1}),
	})
	out := filepath.Join(dir, "results.{job}_{rank}.jsonl")
	env := map[string]string{"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"}
	getenv := func(k string) string { return env[k] }
	var log strings.Builder
	sum, err := slurm.RunShard(context.Background(), slurm.ShardOptions{ShardFile: shard, Out: out, Launcher: lo,
		Log: &log, Environment: getenv})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Points != 6 || sum.Status["ok"] != 2 || sum.Status["failed"] != 3 || sum.Status["timeout"] != 1 || sum.OK() {
		t.Fatalf("summary %+v\n%s", sum, log.String())
	}
	rowsFile := filepath.Join(dir, "results.77_0.jsonl")
	rows, err := slurm.ReadRows(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 6 {
		t.Fatalf("%d rows", len(rows))
	}
	byPoint := map[string]map[string]json.RawMessage{}
	for _, r := range rows {
		byPoint[slurm.RowString(r, "point")] = r
	}
	if r := byPoint["ok1"]; slurm.RowString(r, "status") != "ok" || slurm.RowString(r, "variant") != "v-ok1" || r["result"] == nil {
		t.Errorf("ok row: %v", r)
	}
	if r := byPoint["bad"]; slurm.RowString(r, "status") != "failed" || slurm.RowString(r, "error") != "boom on purpose" || slurm.RowString(r, "error_kind") != "user" {
		t.Errorf("failed row: %v", r)
	}
	if r := byPoint["raise"]; slurm.RowString(r, "error_kind") != "internal" || !strings.Contains(slurm.RowString(r, "error"), "echo raised RuntimeError") {
		t.Errorf("internal-error row: %v", r)
	}
	if r := byPoint["crash"]; slurm.RowString(r, "status") != "failed" || slurm.RowString(r, "error_kind") != "crash" || !strings.Contains(slurm.RowString(r, "error"), "status 3") {
		t.Errorf("crash row: %v", r)
	}
	if r := byPoint["slow"]; slurm.RowString(r, "status") != "timeout" || !strings.Contains(slurm.RowString(r, "error"), "timed out") {
		t.Errorf("timeout row: %v", r)
	}
	if r := byPoint["ok2"]; slurm.RowString(r, "status") != "ok" {
		t.Errorf("point after the timeout did not run in a fresh worker: %v", r)
	}
	// Slurm requeues the task (same job and task id, same file): nothing reruns, nothing is duplicated.
	before, _ := os.ReadFile(rowsFile)
	sum, err = slurm.RunShard(context.Background(), slurm.ShardOptions{ShardFile: shard, Out: out, Launcher: lo, Environment: getenv})
	if err != nil || sum.Skipped != 6 || len(sum.Status) != 0 {
		t.Fatalf("requeued run: %+v %v", sum, err)
	}
	after, _ := os.ReadFile(rowsFile)
	if string(before) != string(after) {
		t.Error("requeued run changed the rows file")
	}
}

func TestRunShardCancelLeavesNoPartialRow(t *testing.T) {
	lo := pythonRunner(t)
	dir := t.TempDir()
	shard := filepath.Join(dir, "s.jsonl")
	writeShard(t, shard, []slurm.Point{echo("a", map[string]any{}), echo("b", map[string]any{"sleep": 30}), echo("c", map[string]any{})})
	ctx, cancel := context.WithCancel(context.Background())
	out := filepath.Join(dir, "results.1_0.jsonl")
	go func() {
		for {
			if b, _ := os.ReadFile(out); strings.Count(string(b), "\n") >= 1 {
				time.Sleep(300 * time.Millisecond) // b is running
				cancel()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	_, err := slurm.RunShard(ctx, slurm.ShardOptions{ShardFile: shard, Out: out, Launcher: lo})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	done, err := slurm.DonePoints(dir)
	if err != nil || len(done) != 1 || done["a"] != "ok" {
		t.Fatalf("rows after cancel: %v %v (want only a)", done, err)
	}
}

// Under torchrun: {rank} and {job} in the paths, metrics written by rank 0 only, events teed.
func TestRunShardRankFiles(t *testing.T) {
	lo := pythonRunner(t)
	dir := t.TempDir()
	shard := filepath.Join(dir, "job.jsonl")
	writeShard(t, shard, []slurm.Point{echo("train", map[string]any{"steps": 3})})
	for _, rank := range []string{"0", "1"} {
		env := map[string]string{"RANK": rank, "SLURM_JOB_ID": "9"}
		sum, err := slurm.RunShard(context.Background(), slurm.ShardOptions{ShardFile: shard, Launcher: lo,
			Out:         filepath.Join(dir, "result.{job}.rank{rank}.jsonl"),
			Events:      filepath.Join(dir, "events.{job}.rank{rank}.jsonl"),
			Metrics:     filepath.Join(dir, "metrics.jsonl"),
			Environment: func(k string) string { return env[k] }})
		if err != nil || !sum.OK() {
			t.Fatalf("rank %s: %+v %v", rank, sum, err)
		}
	}
	for _, f := range []string{"result.9.rank0.jsonl", "result.9.rank1.jsonl", "events.9.rank0.jsonl", "events.9.rank1.jsonl"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	ev, _ := os.ReadFile(filepath.Join(dir, "events.9.rank1.jsonl"))
	if !strings.Contains(string(ev), `"event":"end"`) || strings.Count(string(ev), `"event":"progress"`) != 3 {
		t.Errorf("events file: %s", ev)
	}
	m, _ := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
	if strings.Count(string(m), "\n") != 1 || !strings.Contains(string(m), `"step":3`) {
		t.Errorf("metrics (rank 0 only, one metric event): %q", m)
	}
}
