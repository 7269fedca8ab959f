package train

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdnctl/mdnctl/launcher"
)

// Files of a run directory.
const (
	ConfigFile  = "config.toml"   // the resolved config (what --resume reads back)
	SpecFile    = "job.json"      // the job spec line (torchrun workers read it)
	MetricsFile = "metrics.jsonl" // one metric event's data per line (rank 0), steps ascending
	ResultFile  = "result.json"   // the job's result (the run summary)
	LogFile     = "train.log"     // the Python side's stderr (all ranks)
)

// ErrInterrupted: the run was stopped (Ctrl-C / SIGTERM) after saving a checkpoint; it wraps context.Canceled.
var ErrInterrupted = fmt.Errorf("training interrupted: %w", context.Canceled)

// Metric is one metric event's data (the keys the trainer emits; others are kept in Raw).
type Metric struct {
	Step         int64           `json:"step"`
	Loss         float64         `json:"loss"`
	LR           float64         `json:"lr"`
	GradNorm     float64         `json:"grad_norm"`
	TokensPerS   float64         `json:"tokens_per_s"`
	TokensPerGPU float64         `json:"tokens_per_s_per_gpu"`
	MFU          *float64        `json:"mfu"`
	PeakMemGB    float64         `json:"peak_mem_gb"`
	Raw          json.RawMessage `json:"-"`
}

// RunOptions say how to run a resolved config.
type RunOptions struct {
	Config  *Config
	OutDir  string
	Resume  bool
	Python  string
	Dir     string // working directory of the child (the repo root)
	GPUs    int
	Runner  launcher.JobRunner
	Stderr  io.Writer // optional tee of the Python stderr (besides OutDir/train.log)
	Timeout time.Duration

	OnLaunch   func(*Launch)
	OnMetric   func(Metric)
	OnProgress func(done, total int, msg string)
	// Signal delivers the graceful stop (SIGTERM to rank 0); tests replace it.
	Signal func(pid int, sig syscall.Signal) error
}

// Outcome is a finished (or stopped) run.
type Outcome struct {
	OutDir      string
	Result      map[string]any
	Interrupted bool
	Launch      *Launch
}

// Run trains: it writes the run directory, starts the job through the launcher, records metrics, and on the
// first cancellation of ctx asks rank 0 to stop (SIGTERM: it finishes the step, writes a checkpoint and
// returns), falling back to killing the process group after train.stop_grace_s.
func Run(ctx context.Context, o RunOptions) (*Outcome, error) {
	c := o.Config
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("create run dir: %w", err)
	}
	ckStep, hasCk := LatestCheckpoint(o.OutDir)
	if hasCk && !o.Resume {
		return nil, fmt.Errorf("run dir %s already has a checkpoint (step %d): continue it with --resume, or choose another --out",
			o.OutDir, ckStep)
	}
	if err := writeFileAtomic(filepath.Join(o.OutDir, ConfigFile), func(w io.Writer) error { return c.WriteTOML(w) }); err != nil {
		return nil, err
	}
	spec := launcher.Spec{V: launcher.ProtocolVersion, ID: "train-" + sanitize(c.Name), Kind: "train",
		Params: c.Params(o.OutDir, o.Resume)}
	specPath := filepath.Join(o.OutDir, SpecFile)
	line, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("encode job spec: %w", err)
	}
	if err := writeFileAtomic(specPath, func(w io.Writer) error { _, err := w.Write(append(line, '\n')); return err }); err != nil {
		return nil, err
	}
	keep := int64(0)
	if o.Resume && hasCk {
		keep = ckStep
	}
	metrics, err := openMetrics(filepath.Join(o.OutDir, MetricsFile), keep)
	if err != nil {
		return nil, err
	}
	defer metrics.Close()
	plan, err := c.PlanLaunch(o.Python, o.GPUs, specPath)
	if err != nil {
		return nil, err
	}
	if o.OnLaunch != nil {
		o.OnLaunch(plan)
	}
	logf, err := os.OpenFile(filepath.Join(o.OutDir, LogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open train log: %w", err)
	}
	defer logf.Close()
	var stderr io.Writer = logf
	if o.Stderr != nil {
		stderr = io.MultiWriter(logf, o.Stderr)
	}
	grace := time.Duration(c.Float("train.stop_grace_s") * float64(time.Second))
	var pid atomic.Int64
	var metricErr error
	var mu sync.Mutex
	opts := launcher.Options{
		Python: plan.Python, Args: plan.Args, Dir: o.Dir, Env: missingEnv(plan.Env), Timeout: o.Timeout,
		Grace: grace, Stderr: stderr, TailLines: 60,
		OnEvent: func(ev launcher.Event) {
			switch ev.Event {
			case "start":
				pid.Store(int64(ev.PID))
			case "progress":
				if o.OnProgress != nil {
					o.OnProgress(ev.Done, ev.Total, ev.Message)
				}
			case "metric":
				var m Metric
				if json.Unmarshal(ev.Data, &m) == nil {
					m.Raw = ev.Data
					if err := metrics.Append(ev.Data); err != nil {
						mu.Lock()
						metricErr = err
						mu.Unlock()
					}
					if o.OnMetric != nil {
						o.OnMetric(m)
					}
				}
			}
		},
	}
	signal := o.Signal
	if signal == nil {
		signal = func(p int, s syscall.Signal) error { return syscall.Kill(p, s) }
	}
	jobCtx, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	type done struct {
		out *launcher.Outcome
		err error
	}
	ch := make(chan done, 1)
	go func() {
		out, err := o.Runner.Run(jobCtx, opts, spec)
		ch <- done{out, err}
	}()
	var res done
	interrupted := false
	select {
	case res = <-ch:
	case <-ctx.Done():
		interrupted = true
		if p := pid.Load(); p > 0 && signal(int(p), syscall.SIGTERM) == nil {
			t := time.NewTimer(grace)
			select {
			case res = <-ch:
			case <-t.C:
				hardStop()
				res = <-ch
			}
			t.Stop()
		} else {
			hardStop()
			res = <-ch
		}
	}
	out := &Outcome{OutDir: o.OutDir, Launch: plan, Interrupted: interrupted}
	if res.out != nil && res.out.Result != nil {
		if err := json.Unmarshal(res.out.Result, &out.Result); err == nil {
			_ = writeFileAtomic(filepath.Join(o.OutDir, ResultFile), func(w io.Writer) error {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(out.Result)
			})
		}
	}
	if res.err != nil {
		if interrupted {
			return out, ErrInterrupted
		}
		return out, res.err
	}
	mu.Lock()
	defer mu.Unlock()
	if metricErr != nil {
		return out, fmt.Errorf("write %s: %w", MetricsFile, metricErr)
	}
	if interrupted {
		return out, ErrInterrupted
	}
	return out, nil
}

// LatestCheckpoint returns the newest complete checkpoint's step in <dir>/checkpoints (a step_N directory
// with meta.json, as mdn.train.checkpoint writes them).
func LatestCheckpoint(dir string) (int64, bool) {
	entries, err := os.ReadDir(filepath.Join(dir, "checkpoints"))
	if err != nil {
		return 0, false
	}
	var steps []int64
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || !strings.HasPrefix(name, "step_") || strings.HasSuffix(name, ".tmp") {
			continue
		}
		var s int64
		if _, err := fmt.Sscanf(name, "step_%d", &s); err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "checkpoints", name, "meta.json")); err == nil {
			steps = append(steps, s)
		}
	}
	if len(steps) == 0 {
		return 0, false
	}
	sort.Slice(steps, func(i, j int) bool { return steps[i] < steps[j] })
	return steps[len(steps)-1], true
}

// missingEnv keeps the KEY=VALUE entries whose key is not already set (the user's environment wins).
func missingEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := os.LookupEnv(k); !ok {
			out = append(out, kv)
		}
	}
	return out
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

func writeFileAtomic(path string, write func(io.Writer) error) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}
