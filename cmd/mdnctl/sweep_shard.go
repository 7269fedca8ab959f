package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/results"
	"github.com/mdnctl/mdnctl/slurm"
	"github.com/mdnctl/mdnctl/sweep"
)

// `mdnctl run-shard` is what a Slurm array task (or a torchrun rank) runs: the points of one shard file, one row
// per point appended to the task's own results file. Hidden: mdnctl writes the calls into the sbatch scripts.
//
// Two modes:
//   - --sweep-file F: F (the copy kept with the submission) is expanded as `mdnctl sweep` does, the points listed
//     in the shard are picked by id and run by sweep.Execute (warm worker per slot, probe, gate, failure rows),
//     so rows are exactly those of a local sweep.
//   - otherwise each shard line's launcher spec runs through slurm.RunShard (generic jobs, training ranks).
func init() { register(newRunShardCmd) }

type runShardOptions struct {
	ShardFile string
	Out       string
	SweepFile string
	GPUs      string
	Events    string
	Metrics   string
	Timeout   time.Duration
	FailExit  bool
}

// shardRowBuilder lets other code replace the rows of the generic mode; nil = slurm.DefaultRow.
var shardRowBuilder slurm.RowBuilder

// sweepShardStart starts the workers of the sweep mode; tests swap in a fake.
var sweepShardStart = sweep.LauncherStart

func newRunShardCmd(g *globalOptions) *cobra.Command {
	o := &runShardOptions{}
	cmd := &cobra.Command{
		Use:    "run-shard --shard-file FILE --out ROWS.jsonl",
		Short:  "Run one shard of points (what a Slurm array task or torchrun rank runs)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.SweepFile != "" {
				return runSweepShard(cmd.Context(), g, o)
			}
			return runShard(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ShardFile, "shard-file", "", "JSON lines of points ({point, spec, row})")
	f.StringVar(&o.Out, "out", "", "results file to append rows to; {rank} and {job} are filled in")
	f.StringVar(&o.SweepFile, "sweep-file", "", "run the shard's points of this sweep file with the sweep executor")
	f.StringVar(&o.GPUs, "gpus", "slurm", `"slurm": one worker per GPU in CUDA_VISIBLE_DEVICES (the CPU when none); "cpu"`)
	f.StringVar(&o.Events, "events", "", "also write every protocol event here; {rank} and {job} are filled in")
	f.StringVar(&o.Metrics, "metrics", "", "write each metric event's data here (rank 0 only under torchrun)")
	f.DurationVar(&o.Timeout, "timeout", 0, "per point (0 = none; the sweep file's timeout in --sweep-file mode)")
	f.BoolVar(&o.FailExit, "fail-exit", false, "exit 1 when a point did not end ok (training ranks)")
	_ = cmd.MarkFlagRequired("shard-file")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// visibleGPUs lists the GPUs Slurm gave the task ("" entries and NoDevFiles dropped).
func visibleGPUs() []string {
	var out []string
	for _, id := range strings.Split(os.Getenv("CUDA_VISIBLE_DEVICES"), ",") {
		if id = strings.TrimSpace(id); id != "" && id != "NoDevFiles" {
			out = append(out, id)
		}
	}
	return out
}

func runShard(ctx context.Context, g *globalOptions, o *runShardOptions) error {
	if o.GPUs != "slurm" && o.GPUs != "cpu" {
		return userErrorf("run-shard: --gpus %q: expected slurm or cpu", o.GPUs)
	}
	py, _, err := g.PythonPath()
	if err != nil {
		return userErrorf("%v", err)
	}
	sum, err := slurm.RunShard(ctx, slurm.ShardOptions{
		ShardFile: o.ShardFile,
		Out:       o.Out,
		Events:    o.Events,
		Metrics:   o.Metrics,
		Launcher:  launcher.Options{Python: py, Timeout: o.Timeout, Stderr: g.Stderr},
		BuildRow:  shardRowBuilder,
		Log:       g.Stderr,
		PerGPU:    o.GPUs == "slurm",
	})
	if err != nil {
		return err
	}
	if g.JSON {
		_ = json.NewEncoder(g.Stdout).Encode(sum)
	} else if !g.Quiet {
		fmt.Fprintf(g.Stderr, "mdnctl run-shard: %d points (%d already done) %v\n", sum.Points, sum.Skipped, sum.Status)
	}
	if o.FailExit && !sum.OK() {
		return &exitCodeError{code: 1, err: fmt.Errorf("not every point ended ok: %v", sum.Status)}
	}
	return nil
}

func runSweepShard(ctx context.Context, g *globalOptions, o *runShardOptions) error {
	f, err := sweep.Load(o.SweepFile)
	if err != nil {
		return userErrorf("%v", err)
	}
	plan, err := f.Expand()
	if err != nil {
		return userErrorf("%v", err)
	}
	shard, err := slurm.ReadShard(o.ShardFile)
	if err != nil {
		return err
	}
	byID := map[string]sweep.Point{}
	for _, p := range plan.Points {
		byID[p.ID] = p
	}
	existing, _, err := results.Read(o.Out) // a requeued task: its own rows so far
	if err != nil {
		return err
	}
	ix := results.NewIndex(existing)
	var todo []sweep.Point
	skipped := 0
	for _, sp := range shard {
		p, ok := byID[sp.ID]
		if !ok {
			return fmt.Errorf("run-shard: point %s of %s is not in the expansion of %s", sp.ID, o.ShardFile, o.SweepFile)
		}
		if ix.Done(p.ID, false) {
			skipped++
			continue
		}
		todo = append(todo, p)
	}
	slots := []sweep.Slot{sweep.CPUSlot()}
	switch o.GPUs {
	case "cpu":
	case "slurm":
		if ids := visibleGPUs(); len(ids) > 0 {
			slots = nil
			for _, id := range ids {
				slots = append(slots, sweep.GPUSlot(id))
			}
		}
	default:
		return userErrorf("run-shard: --gpus %q: expected slurm or cpu", o.GPUs)
	}
	py, _, err := g.PythonPath()
	if err != nil {
		return userErrorf("%v", err)
	}
	w, _, err := results.Open(o.Out)
	if err != nil {
		return err
	}
	defer w.Close()
	sum, err := sweep.Execute(ctx, f, todo, skipped, sweep.Options{
		Slots:   slots,
		Start:   sweepShardStart(launcher.Options{Python: py}),
		Sink:    w,
		Timeout: o.Timeout,
		Version: versionString(),
	})
	if sum != nil && !g.Quiet {
		fmt.Fprintf(g.Stderr, "mdnctl run-shard: %d points of %s (%d already done) %v\n", len(shard), f.Name, skipped, sum.Statuses)
	}
	return err
}

// slurmSweepPoints turns an expanded sweep into Slurm points for slurm.SweepSubmission{SweepFile: f.Path}: the
// id selects the point in the task's own expansion; the spec (as on the CPU) is kept for reading the shards.
func slurmSweepPoints(f *sweep.File, pts []sweep.Point) []slurm.Point {
	out := make([]slurm.Point, 0, len(pts))
	for _, p := range pts {
		out = append(out, slurm.Point{ID: p.ID,
			Spec: launcher.Spec{ID: p.ID, Kind: f.Job, Params: sweep.JobParams(f, p, sweep.CPUSlot())}})
	}
	return out
}
