package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/slurm"
	"github.com/mdnctl/mdnctl/train"
)

// slurmConfigFile keeps a run's effective [slurm] settings, so `--resume --out DIR` without CONFIG submits alike.
const slurmConfigFile = "train-slurm.json"

var slurmTableRE = regexp.MustCompile(`^\s*\[\s*slurm\s*\]\s*(#.*)?$`)
var anyTableRE = regexp.MustCompile(`^\s*\[`)

// loadTrainConfig is train.Load for a training TOML that may carry a [slurm] table (read by the Slurm backend,
// unknown to the train package): the table's lines are blanked, so every other error keeps its file:line.
func loadTrainConfig(path string) (*train.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil || !hasSlurmTable(data) {
		return train.Load(path)
	}
	lines := strings.Split(string(data), "\n")
	in := false
	for i, l := range lines {
		if anyTableRE.MatchString(l) {
			in = slurmTableRE.MatchString(l)
		}
		if in {
			lines[i] = ""
		}
	}
	tmp, err := os.CreateTemp("", "mdnctl-train-*.toml")
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(strings.Join(lines, "\n"))
	if cerr := tmp.Close(); werr != nil || cerr != nil {
		return nil, fmt.Errorf("read config: %v %v", werr, cerr)
	}
	c, err := train.Load(tmp.Name())
	if err != nil {
		return nil, errors.New(strings.ReplaceAll(err.Error(), tmp.Name(), path))
	}
	c.Source = path
	if c.Name == strings.TrimSuffix(filepath.Base(tmp.Name()), ".toml") {
		c.Name = strings.TrimSuffix(filepath.Base(path), ".toml")
	}
	return c, nil
}

func hasSlurmTable(data []byte) bool {
	for _, l := range strings.Split(string(data), "\n") {
		if slurmTableRE.MatchString(l) {
			return true
		}
	}
	return false
}

// slurmConfig is the [slurm] table of CONFIG (else the one saved by an earlier submission of the run), with
// the command-line flags on top, and nodes/processes from the training config where [slurm] leaves them open.
func (o *trainOptions) slurmConfig(arg string, c *train.Config, out string) (slurm.Config, error) {
	var cfg slurm.Config
	src := ""
	if arg != "" {
		if p, err := train.FindConfig(arg, filepath.Join(o.g.RepoRoot, "configs")); err == nil {
			src = p
		}
	}
	if src != "" {
		data, err := os.ReadFile(src)
		if err != nil {
			return cfg, fmt.Errorf("read config: %w", err)
		}
		if cfg, err = slurm.ParseConfigTOML(src, data); err != nil {
			return cfg, &userError{err.Error()}
		}
	} else if b, err := os.ReadFile(filepath.Join(slurm.SlurmDir(out), slurmConfigFile)); err == nil {
		if err := json.Unmarshal(b, &cfg); err != nil {
			return cfg, fmt.Errorf("read %s: %w", slurmConfigFile, err)
		}
	}
	fl := o.slurmFlags
	if fl.Nodes > 0 {
		cfg.Nodes = fl.Nodes
	}
	if fl.GPUsPerNode >= 0 {
		cfg.GPUs = fl.GPUsPerNode
	}
	for _, s := range []struct {
		dst *string
		v   string
	}{{&cfg.Partition, fl.Partition}, {&cfg.Account, fl.Account}, {&cfg.Time, fl.Time}} {
		if s.v != "" {
			*s.dst = s.v
		}
	}
	if cfg.Nodes == 0 {
		if n := c.Int("parallel.nnodes"); n > 1 {
			cfg.Nodes = int(n)
		}
	}
	if cfg.ProcsPerNode == 0 {
		if p, ok := c.Values["parallel"]["nproc_per_node"].(int64); ok {
			cfg.ProcsPerNode = int(p)
		}
	}
	if err := cfg.Validate(); err != nil {
		var fe *slurm.FieldError
		if errors.As(err, &fe) {
			fe.File = "command line"
		}
		return cfg, &userError{err.Error()}
	}
	return cfg, nil
}

// slurmFlags: the [slurm] keys that have flags.
type trainSlurmFlags struct {
	Nodes       int
	GPUsPerNode int // -1: not given
	Partition   string
	Account     string
	Time        string
}

func (f trainSlurmFlags) given(wait bool) bool {
	return wait || f.Nodes > 0 || f.GPUsPerNode > 0 || f.Partition != "" || f.Account != "" || f.Time != ""
}

// runSlurm submits the training run as one sbatch job (torchrun on every node, each rank through `mdnctl
// run-shard` and the launcher), with the run directory laid out as a local run's.
func (o *trainOptions) runSlurm(ctx context.Context, arg string, c *train.Config, counts train.Counts, out, py string) error {
	cfg, err := o.slurmConfig(arg, c, out)
	if err != nil {
		return err
	}
	if cfg.Python != "" {
		py = cfg.Python
	}
	ckStep, hasCk := train.LatestCheckpoint(out)
	if hasCk && !o.Resume && !o.DryRun {
		return userErrorf("run dir %s already has a checkpoint (step %d): continue it with --resume, or choose another --out", out, ckStep)
	}
	spec := launcher.Spec{V: launcher.ProtocolVersion, ID: "train-" + c.Name, Kind: "train", Params: c.Params(out, o.Resume)}
	plan, err := slurm.PrepareTrain(slurm.TrainSubmission{Name: c.Name, RunDir: out, Spec: &spec, Config: cfg,
		RepoRoot: o.g.RepoRoot, Python: py, MetricsFile: filepath.Join(out, train.MetricsFile)})
	if err != nil {
		return &userError{err.Error()}
	}
	if o.DryRun && o.g.JSON {
		enc := json.NewEncoder(o.g.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"name": c.Name, "source": c.Source, "overrides": c.Overrides, "out_dir": out,
			"params": counts, "config": spec.Params, "slurm": cfg, "torchrun": torchrunLine(plan.Script),
			"sbatch": []string{"sbatch", "--parsable", plan.ScriptPath}, "script": plan.Script})
	}
	if o.DryRun {
		w := o.g.Stdout
		fmt.Fprintf(w, "config:     %s", c.Source)
		if len(c.Overrides) > 0 {
			fmt.Fprintf(w, " (--set %s)", strings.Join(c.Overrides, ", "))
		}
		fmt.Fprintf(w, "\nmodel:      %s\nparameters: %d total (%s)\nrun dir:    %s\n", describeModel(c), counts.Total,
			fmtParamCount(counts.Total), out)
		fmt.Fprintf(w, "torchrun:   %s\n\n", torchrunLine(plan.Script))
		return plan.DryRun(w)
	}
	// The run directory as a local run writes it: resolved config, job spec, metrics (kept up to the checkpoint).
	if err := os.MkdirAll(slurm.SlurmDir(out), 0o755); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	var cb bytes.Buffer
	if err := c.WriteTOML(&cb); err != nil {
		return err
	}
	line, _ := json.Marshal(spec)
	cj, _ := json.MarshalIndent(cfg, "", "  ")
	keep := int64(0)
	if o.Resume && hasCk {
		keep = ckStep
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{train.ConfigFile, cb.Bytes()}, {train.SpecFile, append(line, '\n')},
		{filepath.Join("slurm", slurmConfigFile), append(cj, '\n')},
		{train.MetricsFile, keptMetrics(filepath.Join(out, train.MetricsFile), keep)}} {
		if err := os.WriteFile(filepath.Join(out, f.name), f.data, 0o644); err != nil {
			return fmt.Errorf("write run dir: %w", err)
		}
	}
	sub, err := plan.Submit(ctx, slurmRunner)
	if err != nil {
		if errors.Is(err, slurm.ErrActive) {
			return &userError{err.Error()}
		}
		return fmt.Errorf("submit training job: %w", err)
	}
	if !o.g.Quiet {
		fmt.Fprintf(o.g.Stderr, "mdnctl train: %s (%s params) submitted as Slurm job %s -> %s\n  script: %s\n",
			c.Name, fmtParamCount(counts.Total), sub.JobID, out, sub.Script)
	}
	if !o.Wait {
		if o.g.JSON {
			return json.NewEncoder(o.g.Stdout).Encode(map[string]any{"out_dir": out, "job_id": sub.JobID, "script": sub.Script})
		}
		if !o.g.Quiet {
			fmt.Fprintf(o.g.Stdout, "submitted job %s; follow with: mdnctl status %s; stop with: mdnctl cancel %s\n", sub.JobID, out, out)
		}
		return nil
	}
	return o.waitSlurm(ctx, out, sub)
}

// waitSlurm polls until the job leaves the queue, then reports rank 0's result like a local run.
func (o *trainOptions) waitSlurm(ctx context.Context, out string, sub slurm.Submission) error {
	interval := o.pollInterval
	if interval == 0 {
		interval = 5 * time.Second
	}
	err := slurm.WaitRun(ctx, slurmRunner, out, interval, nil)
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(o.g.Stderr, "mdnctl train: stopped waiting; job %s keeps running (mdnctl status %s; mdnctl cancel %s)\n", sub.JobID, out, out)
		}
		return err
	}
	st, err := slurm.Status(ctx, slurmRunner, out)
	if err != nil {
		return err
	}
	last := st.Submissions[len(st.Submissions)-1]
	var rank0 *slurm.RankResult
	for i := range last.Ranks {
		if last.Ranks[i].Rank == 0 {
			rank0 = &last.Ranks[i]
		}
	}
	if st.State != "DONE" || rank0 == nil || rank0.Status != "ok" {
		msg := ""
		for _, r := range last.Ranks {
			if r.Status != "ok" {
				msg = fmt.Sprintf("; rank %d %s: %s", r.Rank, r.Status, r.Error)
				break
			}
		}
		return userErrorf("train: Slurm job %s ended %s%s (see %s and mdnctl status %s)", sub.JobID, st.State, msg,
			filepath.Join(slurm.SlurmDir(out), "logs", "train_"+sub.JobID+".out"), out)
	}
	var res map[string]any
	if err := json.Unmarshal(rank0.Result, &res); err != nil {
		return fmt.Errorf("rank 0 result: %w", err)
	}
	if b, err := json.MarshalIndent(res, "", "  "); err == nil {
		_ = os.WriteFile(filepath.Join(out, train.ResultFile), append(b, '\n'), 0o644)
	}
	if o.g.JSON {
		enc := json.NewEncoder(o.g.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"out_dir": out, "job_id": sub.JobID, "result": res})
	}
	if !o.g.Quiet {
		printTrainSummary(o.g.Stdout, &train.Outcome{OutDir: out, Result: res})
	}
	return nil
}

// keptMetrics: the complete metric rows with step <= keep (keep = 0: none), as a local resume keeps them.
func keptMetrics(path string, keep int64) []byte {
	var buf bytes.Buffer
	if keep <= 0 {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var row struct {
			Step *int64 `json:"step"`
		}
		if json.Unmarshal(sc.Bytes(), &row) != nil || row.Step == nil || *row.Step > keep {
			continue
		}
		buf.Write(bytes.TrimSpace(sc.Bytes()))
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}

// torchrunLine is the torchrun command of a training script (its continuation lines joined).
func torchrunLine(script string) string {
	var parts []string
	on := false
	for _, l := range strings.Split(script, "\n") {
		if strings.Contains(l, "torch.distributed.run") {
			on = true
			l = strings.TrimPrefix(strings.TrimSpace(l), "exec ")
		}
		if !on {
			continue
		}
		t := strings.TrimSpace(l)
		cont := strings.HasSuffix(t, "\\")
		parts = append(parts, strings.TrimSpace(strings.TrimSuffix(t, "\\")))
		if !cont {
			break
		}
	}
	return strings.Join(parts, " ")
}
