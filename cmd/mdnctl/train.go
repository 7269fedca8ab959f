package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/train"
)

func init() { register(newTrainCmd) }

// trainOptions: `mdnctl train CONFIG`. The Python side is the `train` job (triton/mdn/runner/jobs/train.py).
type trainOptions struct {
	g            *globalOptions
	Sets         []string
	Out          string
	Resume       bool
	DryRun       bool
	Timeout      time.Duration
	Backend      string                         // local | slurm (train_slurm.go)
	Wait         bool                           // slurm: wait for the job
	slurmFlags   trainSlurmFlags                // slurm: --nodes, --gpus-per-node, --partition, --account, --time
	pollInterval time.Duration                  // slurm --wait: squeue interval (tests shorten it)
	runner       launcher.JobRunner             // the real launcher; a fake in tests
	findPython   func() (string, string, error) // g.PythonPath; a fake in tests
	gpus         func() int                     // train.VisibleGPUs; a fake in tests
	onMetric     func(train.Metric)             // tests: observe the run
}

func newTrainCmd(g *globalOptions) *cobra.Command {
	o := &trainOptions{g: g, runner: launcher.OneShot{}, findPython: g.PythonPath, gpus: train.VisibleGPUs}
	cmd := &cobra.Command{
		Use:   "train CONFIG",
		Short: "Train a model (MDN, GDN, Transformer, ...) from configs/*.toml, on CPU, one GPU or torchrun",
		Long: `train resolves a run config and starts the 'train' job of the Python runner.

CONFIG is a TOML file or a name in configs/: "1.3b" is configs/mdn-1.3b.toml, "tiny" configs/mdn-tiny.toml,
"gdn-1.3b" configs/gdn-1.3b.toml. --set key=value overrides any key ("steps=30", "optim.lr=1e-3",
"data.source=synthetic"; a bare key must belong to one section). The resolved config, the job spec, metrics.jsonl
(one line per metric event: step, loss, lr, grad_norm, tokens/s total and per GPU, MFU, peak memory), the
Python log and checkpoints go to the run directory (--out, default results/train/<name>).

Launch: one CPU process when no GPU is visible; otherwise torchrun with one process per visible GPU
(parallel.nproc_per_node), FSDP2 for models of >= 300M parameters and DDP below (parallel.strategy), or several
nodes with parallel.nnodes and parallel.rdzv_endpoint (run the same command on every node).

Ctrl-C stops gracefully: rank 0 finishes its step and writes a checkpoint (a second Ctrl-C kills). --resume
continues the run in --out from its newest checkpoint with the same loss curve; --set may change e.g. steps.

--backend slurm submits the run as one sbatch job: torchrun on every node (rendezvous from the Slurm environment),
each rank through mdnctl run-shard; settings from the config's [slurm] table (docs/slurm.md) or --nodes,
--gpus-per-node, --partition, --account, --time. The run directory is the same as a local run's (plus slurm/);
--dry-run prints the torchrun command and the script, --wait waits and prints the summary; mdnctl status DIR and
mdnctl cancel DIR follow and stop it; --resume --out DIR submits the continuation.`,
		Example: `  mdnctl train tiny --set steps=30 --out /tmp/tiny
  mdnctl train tiny --set steps=60 --out /tmp/tiny --resume
  mdnctl train 1.3b --dry-run
  mdnctl train 1.3b --backend slurm --nodes 2 --gpus-per-node 8 --partition gpu --time 04:00:00 --dry-run
  mdnctl train tiny --backend slurm --set steps=10 --set nproc_per_node=2 --wait
  mdnctl train gdn-1.3b --set steps=20 --set data.source=synthetic --set seq_len=4096
  mdnctl train configs/mdn-400m.toml --set gate_mode=quadrant --set min_log_mu=none`,
		Args: cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			arg := ""
			if len(args) == 1 {
				arg = args[0]
			}
			return o.run(cmd.Context(), arg)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.Sets, "set", nil, "override a config key: key=value (repeatable)")
	f.StringVar(&o.Out, "out", "", "run directory (default: results/train/<name>)")
	f.BoolVar(&o.Resume, "resume", false, "continue the run in --out from its newest checkpoint")
	f.BoolVar(&o.DryRun, "dry-run", false, "print the resolved config, parameter count and launch command; start nothing")
	f.DurationVar(&o.Timeout, "timeout", 0, "kill the run after this long (0: no limit)")
	f.StringVar(&o.Backend, "backend", "local", `"local" (here) or "slurm" (one sbatch job running torchrun; [slurm] table of CONFIG)`)
	f.BoolVar(&o.Wait, "wait", false, "with --backend slurm: wait until the job is done and print the summary")
	f.IntVar(&o.slurmFlags.Nodes, "nodes", 0, "with --backend slurm: nodes (slurm.nodes)")
	f.IntVar(&o.slurmFlags.GPUsPerNode, "gpus-per-node", -1, "with --backend slurm: GPUs per node, --gres=gpu:N (slurm.gpus)")
	f.StringVar(&o.slurmFlags.Partition, "partition", "", "with --backend slurm: partition (slurm.partition)")
	f.StringVar(&o.slurmFlags.Account, "account", "", "with --backend slurm: account (slurm.account)")
	f.StringVar(&o.slurmFlags.Time, "time", "", "with --backend slurm: time limit, e.g. 02:00:00 (slurm.time)")
	return cmd
}

// resolve loads CONFIG (or, with --resume, the run directory's resolved config), applies --set and finishes.
func (o *trainOptions) resolve(arg string) (*train.Config, string, error) {
	root := o.g.RepoRoot
	var path string
	if o.Resume && o.Out != "" {
		if p := filepath.Join(o.Out, train.ConfigFile); isRegularFile(p) {
			path = p
		}
	}
	var named *train.Config
	if arg != "" {
		p, err := train.FindConfig(arg, filepath.Join(root, "configs"))
		if err != nil {
			return nil, "", &userError{err.Error()}
		}
		if path == "" {
			path = p
		} else if named, err = loadTrainConfig(p); err != nil {
			return nil, "", &userError{err.Error()}
		}
	}
	if path == "" {
		if o.Resume {
			return nil, "", userErrorf("--resume needs --out DIR of an earlier run (with %s) or a CONFIG", train.ConfigFile)
		}
		return nil, "", userErrorf("name a config: a TOML file or one of %s", strings.Join(train.ConfigNames(filepath.Join(root, "configs")), ", "))
	}
	c, err := loadTrainConfig(path)
	if err != nil {
		return nil, "", &userError{err.Error()}
	}
	if named != nil && named.Name != c.Name {
		return nil, "", userErrorf("--resume: %s holds run %q, not %q", o.Out, c.Name, named.Name)
	}
	for _, s := range o.Sets {
		if err := c.Set(s); err != nil {
			return nil, "", &userError{err.Error()}
		}
	}
	if err := c.Finish(); err != nil {
		return nil, "", &userError{err.Error()}
	}
	out := o.Out
	if out == "" {
		out = filepath.Join(root, "results", "train", c.Name)
	}
	if abs, err := filepath.Abs(out); err == nil {
		out = abs
	}
	return c, out, nil
}

func (o *trainOptions) run(ctx context.Context, arg string) error {
	if o.Backend != "" && o.Backend != "local" && o.Backend != "slurm" {
		return userErrorf("--backend %q: expected local or slurm", o.Backend)
	}
	if o.Backend != "slurm" && o.slurmFlags.given(o.Wait) {
		return userErrorf("--wait, --nodes, --gpus-per-node, --partition, --account and --time need --backend slurm")
	}
	c, out, err := o.resolve(arg)
	if err != nil {
		return err
	}
	counts, err := c.ParamCount()
	if err != nil {
		return &userError{err.Error()}
	}
	py := "python3"
	if p, _, err := o.findPython(); err == nil {
		py = p
	} else if !o.DryRun {
		return &userError{err.Error()}
	}
	if o.Backend == "slurm" {
		return o.runSlurm(ctx, arg, c, counts, out, py)
	}
	gpus := o.gpus()
	if o.DryRun {
		return o.dryRun(c, counts, out, py, gpus)
	}
	w := o.g.Stdout
	var prog *trainProgress
	if !o.g.Quiet && !o.g.JSON {
		prog = newTrainProgress(o.g.Stderr, o.g.IsTTY, int(c.Int("train.steps")))
		fmt.Fprintf(o.g.Stderr, "mdnctl train: %s (%s params) -> %s\n", c.Name, fmtParamCount(counts.Total), out)
	}
	res, err := train.Run(ctx, train.RunOptions{
		Config: c, OutDir: out, Resume: o.Resume, Python: py, Dir: o.g.RepoRoot, GPUs: gpus, Runner: o.runner,
		Timeout: o.Timeout,
		OnLaunch: func(l *train.Launch) {
			if prog != nil {
				fmt.Fprintf(o.g.Stderr, "launch: %s\n", describeLaunch(l))
			}
		},
		OnMetric: func(m train.Metric) {
			if prog != nil {
				prog.metric(m)
			}
			if o.onMetric != nil {
				o.onMetric(m)
			}
		},
		OnProgress: func(done, total int, msg string) {
			if prog != nil {
				prog.progress(done, total)
			}
		},
	})
	if prog != nil {
		prog.close()
	}
	if errors.Is(err, train.ErrInterrupted) {
		step := "?"
		if res != nil && res.Result != nil {
			step = fmt.Sprint(res.Result["steps_done"])
		}
		fmt.Fprintf(o.g.Stderr, "mdnctl train: stopped at step %s; continue with: mdnctl train --resume --out %s\n", step, out)
		return err
	}
	if err != nil {
		var je *launcher.JobError
		if errors.As(err, &je) {
			switch je.Kind {
			case "user":
				return userErrorf("train: %s", je.Message)
			case "unavailable":
				return userErrorf("train: unavailable: %s", je.Message)
			case "nan":
				return userErrorf("train: non-finite loss: %s", je.Message)
			}
		}
		return err
	}
	if o.g.JSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"out_dir": out, "result": res.Result})
	}
	if !o.g.Quiet {
		printTrainSummary(w, res)
	}
	return nil
}

func (o *trainOptions) dryRun(c *train.Config, counts train.Counts, out, py string, gpus int) error {
	l, err := c.PlanLaunch(py, gpus, filepath.Join(out, train.SpecFile))
	if err != nil {
		return &userError{err.Error()}
	}
	tokens := c.Int("train.batch_size") * c.Int("train.seq_len") * c.Int("train.grad_accum")
	if o.g.JSON {
		enc := json.NewEncoder(o.g.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{
			"name": c.Name, "source": c.Source, "overrides": c.Overrides, "out_dir": out, "params": counts,
			"tokens_per_step_per_process": tokens, "config": c.Params(out, o.Resume),
			"launch": map[string]any{"torchrun": l.Torchrun, "device": l.Device, "nproc_per_node": l.Procs,
				"nnodes": l.Nodes, "command": l.Command(), "argv": append([]string{l.Python}, l.Args...), "env": l.Env,
				"note": l.Note},
		})
	}
	w := o.g.Stdout
	fmt.Fprintf(w, "config:     %s", c.Source)
	if len(c.Overrides) > 0 {
		fmt.Fprintf(w, " (--set %s)", strings.Join(c.Overrides, ", "))
	}
	fmt.Fprintf(w, "\nmodel:      %s\n", describeModel(c))
	fmt.Fprintf(w, "parameters: %d total (%s), %d non-embedding (%s)\n", counts.Total, fmtParamCount(counts.Total),
		counts.NonEmbedding, fmtParamCount(counts.NonEmbedding))
	fmt.Fprintf(w, "tokens:     %d per step per process (%d x %d x grad_accum %d), %d steps\n", tokens,
		c.Int("train.batch_size"), c.Int("train.seq_len"), c.Int("train.grad_accum"), c.Int("train.steps"))
	fmt.Fprintf(w, "run dir:    %s\n", out)
	fmt.Fprintf(w, "launch:     %s\n", describeLaunch(l))
	if l.Note != "" {
		fmt.Fprintf(w, "note:       %s\n", l.Note)
	}
	if l.Torchrun {
		fmt.Fprintf(w, "torchrun:   %s\n", l.Command())
	} else {
		fmt.Fprintf(w, "command:    %s < %s\n", l.Command(), filepath.Join(out, train.SpecFile))
		if c.Str("train.device") == "auto" {
			if gl, err := planOnGPUNode(c, py, out); err == nil {
				fmt.Fprintf(w, "torchrun:   %s   (on a GPU node: all its GPUs)\n", gl.Command())
			}
		}
	}
	fmt.Fprintln(w, "\nresolved config:")
	return c.WriteTOML(w)
}

// planOnGPUNode is the launch the same config gets on a node whose GPUs torchrun counts at start.
func planOnGPUNode(c *train.Config, py, out string) (*train.Launch, error) {
	saved := c.Values["train"]["device"]
	c.Values["train"]["device"] = "cuda"
	defer func() { c.Values["train"]["device"] = saved }()
	return c.PlanLaunch(py, 0, filepath.Join(out, train.SpecFile))
}

func describeModel(c *train.Config) string {
	arch := c.Str("model.arch")
	s := fmt.Sprintf("%s, %d layers, hidden %d, vocab %d", arch, c.Int("model.num_layers"), c.Int("model.hidden_size"),
		c.Int("model.vocab_size"))
	switch arch {
	case "mdn", "gdn", "kda":
		dv := float64(c.Int("model.head_dim")) * c.Float("model.expand_v")
		s += fmt.Sprintf(", %d heads x %d (values %g)", c.Int("model.num_heads"), c.Int("model.head_dim"), dv)
	case "transformer":
		s += fmt.Sprintf(", %d attention heads", c.Int("model.attn_num_heads"))
	}
	if arch == "mdn" {
		s += fmt.Sprintf(", gate_mode %s, min_log_mu %v", c.Str("model.gate_mode"), c.Values["model"]["min_log_mu"])
	}
	if al, _ := c.Values["model"]["attn_layers"].([]int64); len(al) > 0 {
		s += fmt.Sprintf(", attention at layers %v", al)
	}
	return s
}

func describeLaunch(l *train.Launch) string {
	if !l.Torchrun {
		return fmt.Sprintf("one %s process (python -m mdn.runner)", l.Device)
	}
	procs := "all GPUs of the node"
	if l.Procs > 0 {
		procs = fmt.Sprintf("%d process(es)", l.Procs)
	}
	s := fmt.Sprintf("torchrun, %s on %s", procs, l.Device)
	if l.Nodes > 1 {
		s += fmt.Sprintf(", %d nodes", l.Nodes)
	}
	return s
}

func fmtParamCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fk", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

func fmtTokenRate(x float64) string {
	switch {
	case x >= 1e6:
		return fmt.Sprintf("%.2fM", x/1e6)
	case x >= 1e3:
		return fmt.Sprintf("%.1fk", x/1e3)
	}
	return fmt.Sprintf("%.0f", x)
}

func trainMetricLine(m train.Metric, total int) string {
	mfu := "-"
	if m.MFU != nil {
		mfu = fmt.Sprintf("%.1f%%", 100**m.MFU)
	}
	return fmt.Sprintf("step %d/%d  loss %.4f  lr %.2e  gnorm %.3g  tok/s %s (per GPU %s)  mfu %s  mem %.2f GB",
		m.Step, total, m.Loss, m.LR, m.GradNorm, fmtTokenRate(m.TokensPerS), fmtTokenRate(m.TokensPerGPU), mfu, m.PeakMemGB)
}

// trainProgress: a bar with ETA and the latest loss on a terminal; one line per metric event otherwise.
type trainProgress struct {
	mu    sync.Mutex
	w     io.Writer
	total int
	p     *mpb.Progress
	bar   *mpb.Bar
	last  string
	start time.Time
}

func newTrainProgress(w io.Writer, tty bool, total int) *trainProgress {
	t := &trainProgress{w: w, total: total, start: time.Now()}
	if tty {
		t.p = mpb.New(mpb.WithOutput(w), mpb.WithWidth(40))
		t.bar = t.p.AddBar(int64(total),
			mpb.PrependDecorators(decor.Name("train "), decor.CountersNoUnit("%d/%d")),
			mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
				t.mu.Lock()
				defer t.mu.Unlock()
				return t.last
			}), decor.Name("  ETA "), decor.AverageETA(decor.ET_STYLE_GO)))
	}
	return t
}

func (t *trainProgress) metric(m train.Metric) {
	if t.bar == nil {
		fmt.Fprintln(t.w, trainMetricLine(m, t.total))
		return
	}
	t.mu.Lock()
	t.last = fmt.Sprintf("loss %.4f  %s tok/s", m.Loss, fmtTokenRate(m.TokensPerS))
	t.mu.Unlock()
}

func (t *trainProgress) progress(done, total int) {
	if t.bar == nil {
		return
	}
	if total != t.total && total > 0 {
		t.bar.SetTotal(int64(total), false)
		t.total = total
	}
	t.bar.SetCurrent(int64(done))
}

func (t *trainProgress) close() {
	if t.bar != nil {
		t.bar.Abort(false)
		t.p.Wait()
	}
}

func printTrainSummary(w io.Writer, res *train.Outcome) {
	r := res.Result
	f := func(k string) float64 {
		x, _ := r[k].(float64)
		return x
	}
	fmt.Fprintf(w, "trained %s: steps %v/%v, loss %.4f -> %.4f", r["name"], r["steps_done"], r["steps"],
		f("first_loss"), f("final_loss"))
	if s, _ := r["skipped"].(float64); s > 0 {
		fmt.Fprintf(w, " (%v non-finite steps skipped)", s)
	}
	fmt.Fprintln(w)
	if _, ok := r["tokens_per_s"].(float64); ok {
		fmt.Fprintf(w, "throughput: %s tokens/s (%s per GPU, %v process(es), %s, %s)", fmtTokenRate(f("tokens_per_s")),
			fmtTokenRate(f("tokens_per_s_per_gpu")), r["world_size"], r["device"], r["precision"])
	} else {
		// null: every step was a warm-up step (compilation / autotuning), so there is no steady-state rate
		fmt.Fprintf(w, "throughput: n/a (no step after the warm-up steps; run more steps) (%v process(es), %s, %s)",
			r["world_size"], r["device"], r["precision"])
	}
	if mfu, ok := r["mfu"].(float64); ok && !math.IsNaN(mfu) {
		fmt.Fprintf(w, ", MFU %.1f%%", 100*mfu)
	}
	ckpt, _ := r["checkpoint"].(string)
	if ckpt == "" {
		ckpt = "none"
	}
	fmt.Fprintf(w, "\npeak memory: %.2f GB; checkpoint: %s\nrun dir: %s\n", f("peak_mem_gb"), ckpt, res.OutDir)
}

func isRegularFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
