package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdnctl/mdnctl/launcher"
)

// fakeRunner plays a train job: start (pid 4242), then steps, sending progress and metric events; the job
// "stops" early when stop is closed (a graceful stop), and never ends before ctx is cancelled when hang is set.
type fakeRunner struct {
	steps int
	stop  chan struct{}
	hang  bool
	opts  launcher.Options
	spec  launcher.Spec
	after func(step int) // called after each step's events
}

func (f *fakeRunner) Run(ctx context.Context, opts launcher.Options, spec launcher.Spec) (*launcher.Outcome, error) {
	f.opts, f.spec = opts, spec
	emit := func(ev launcher.Event) { ev.V, ev.Job = 1, spec.ID; opts.OnEvent(ev) }
	emit(launcher.Event{Event: "start", PID: 4242})
	done := 0
	for s := 1; s <= f.steps; s++ {
		select {
		case <-f.stop:
			goto end
		default:
		}
		emit(launcher.Event{Event: "progress", Done: s, Total: f.steps})
		emit(launcher.Event{Event: "metric", Data: json.RawMessage(fmt.Sprintf(`{"step": %d, "loss": %g, "tokens_per_s": 100}`, s, 5.0-float64(s)/10))})
		done = s
		if f.after != nil {
			f.after(s)
		}
	}
end:
	if f.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	res := fmt.Sprintf(`{"name": "mdn-tiny", "steps_done": %d, "final_loss": 1.0}`, done)
	return &launcher.Outcome{JobID: spec.ID, Result: json.RawMessage(res)}, nil
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func TestRunWritesTheRunDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	f := &fakeRunner{steps: 3, stop: make(chan struct{})}
	var metrics []Metric
	out, err := Run(context.Background(), RunOptions{Config: tiny(t, "steps=3"), OutDir: dir, Python: "py", Runner: f,
		OnMetric: func(m Metric) { metrics = append(metrics, m) }})
	if err != nil {
		t.Fatal(err)
	}
	if out.Result["steps_done"] != 3.0 || len(metrics) != 3 || metrics[2].Step != 3 {
		t.Errorf("result %v metrics %v", out.Result, metrics)
	}
	if l := readLines(t, filepath.Join(dir, MetricsFile)); len(l) != 3 || !strings.HasPrefix(l[0], `{"step":1,`) {
		t.Errorf("metrics.jsonl: %q", l)
	}
	for _, name := range []string{ConfigFile, SpecFile, ResultFile, LogFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if f.spec.Kind != "train" || f.spec.Params["out_dir"] != dir || f.spec.Params["resume"] != false {
		t.Errorf("spec: %+v", f.spec)
	}
	if f.opts.Python != "py" || strings.Join(f.opts.Args, " ") != "-m mdn.runner" {
		t.Errorf("launch: %s %v", f.opts.Python, f.opts.Args)
	}
	var line launcher.Spec
	if err := json.Unmarshal([]byte(readLines(t, filepath.Join(dir, SpecFile))[0]), &line); err != nil || line.ID != f.spec.ID {
		t.Errorf("job.json: %v %+v", err, line)
	}
	if c, err := Load(filepath.Join(dir, ConfigFile)); err != nil || c.Finish() != nil || c.Int("train.steps") != 3 {
		t.Errorf("config.toml does not load back: %v", err)
	}
}

func writeCheckpoint(t *testing.T, dir string, step int) {
	t.Helper()
	p := filepath.Join(dir, "checkpoints", fmt.Sprintf("step_%06d", step))
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "meta.json"), []byte(fmt.Sprintf(`{"step": %d}`, step)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestResumeKeepsMetricsUpToTheCheckpoint(t *testing.T) {
	dir := t.TempDir()
	writeCheckpoint(t, dir, 2)
	_ = os.MkdirAll(filepath.Join(dir, "checkpoints", "step_000009.tmp"), 0o755) // a half-written one: ignored
	rows := `{"step":1,"loss":5}` + "\n" + `{"step":2,"loss":4}` + "\n" + `{"step":3,"loss":3}` + "\n" + `{"step":4,"lo`
	if err := os.WriteFile(filepath.Join(dir, MetricsFile), []byte(rows), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Run(context.Background(), RunOptions{Config: tiny(t), OutDir: dir, Runner: &fakeRunner{steps: 1}})
	if err == nil || !strings.Contains(err.Error(), "already has a checkpoint (step 2): continue it with --resume") {
		t.Fatalf("without --resume: %v", err)
	}
	f := &fakeRunner{steps: 0}
	f.after = nil
	if _, err := Run(context.Background(), RunOptions{Config: tiny(t), OutDir: dir, Resume: true, Runner: f}); err != nil {
		t.Fatal(err)
	}
	if l := readLines(t, filepath.Join(dir, MetricsFile)); len(l) != 2 || l[1] != `{"step":2,"loss":4}` {
		t.Errorf("kept rows: %q", l)
	}
	if f.spec.Params["resume"] != true {
		t.Errorf("resume not passed on: %v", f.spec.Params["resume"])
	}
}

func TestInterruptAsksRankZeroToStop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeRunner{steps: 100, stop: make(chan struct{})}
	f.after = func(step int) {
		if step == 3 {
			cancel() // Ctrl-C during step 4
			time.Sleep(20 * time.Millisecond)
		}
	}
	var sig []string
	out, err := Run(ctx, RunOptions{Config: tiny(t), OutDir: t.TempDir(), Runner: f,
		Signal: func(pid int, s syscall.Signal) error {
			sig = append(sig, fmt.Sprintf("%d:%v", pid, s))
			close(f.stop)
			return nil
		}})
	if !errors.Is(err, ErrInterrupted) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if len(sig) != 1 || sig[0] != "4242:terminated" {
		t.Errorf("signals: %v", sig)
	}
	if !out.Interrupted || out.Result == nil || out.Result["steps_done"].(float64) < 3 {
		t.Errorf("outcome: %+v", out)
	}
	if _, err := os.Stat(filepath.Join(out.OutDir, ResultFile)); err != nil {
		t.Errorf("the stopped run's result is kept: %v", err)
	}
}

func TestInterruptFallsBackToKillAfterTheGrace(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeRunner{steps: 1, hang: true, stop: make(chan struct{})}
	f.after = func(int) { cancel() }
	start := time.Now()
	_, err := Run(ctx, RunOptions{Config: tiny(t, "stop_grace_s=0.2"), OutDir: t.TempDir(), Runner: f,
		Signal: func(int, syscall.Signal) error { return nil }})
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 5*time.Second {
		t.Errorf("hard stop after %s, want about the 0.2 s grace", d)
	}
}
