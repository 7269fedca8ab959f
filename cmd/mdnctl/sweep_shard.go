package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/slurm"
)

// `mdnctl run-shard` is what a Slurm array task (or a torchrun rank) runs: the points of one shard file through
// the launcher, one row per point appended to the task's own results file. Hidden: mdnctl writes the calls.
func init() { register(newRunShardCmd) }

type runShardOptions struct {
	ShardFile string
	Out       string
	Events    string
	Metrics   string
	Timeout   time.Duration
	FailExit  bool
	PerGPU    bool
}

// shardRowBuilder lets the sweep code build its own rows (same fields as a local run); nil = slurm.DefaultRow.
var shardRowBuilder slurm.RowBuilder

func newRunShardCmd(g *globalOptions) *cobra.Command {
	o := &runShardOptions{}
	cmd := &cobra.Command{
		Use:    "run-shard --shard-file FILE --out ROWS.jsonl",
		Short:  "Run one shard of points (what a Slurm array task or torchrun rank runs)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runShard(cmd, g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ShardFile, "shard-file", "", "JSON lines of points ({point, spec, row})")
	f.StringVar(&o.Out, "out", "", "results file to append rows to; {rank} and {job} are filled in")
	f.StringVar(&o.Events, "events", "", "also write every protocol event here; {rank} and {job} are filled in")
	f.StringVar(&o.Metrics, "metrics", "", "write each metric event's data here (rank 0 only under torchrun)")
	f.DurationVar(&o.Timeout, "timeout", 0, "per point (0 = none)")
	f.BoolVar(&o.FailExit, "fail-exit", false, "exit 1 when a point did not end ok (training ranks)")
	f.BoolVar(&o.PerGPU, "per-gpu", true, "with several GPUs in CUDA_VISIBLE_DEVICES, run one worker per GPU")
	_ = cmd.MarkFlagRequired("shard-file")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func runShard(cmd *cobra.Command, g *globalOptions, o *runShardOptions) error {
	py, _, err := g.PythonPath()
	if err != nil {
		return userErrorf("%v", err)
	}
	sum, err := slurm.RunShard(cmd.Context(), slurm.ShardOptions{
		ShardFile: o.ShardFile,
		Out:       o.Out,
		Events:    o.Events,
		Metrics:   o.Metrics,
		Launcher:  launcher.Options{Python: py, Timeout: o.Timeout, Stderr: g.Stderr},
		BuildRow:  shardRowBuilder,
		Log:       g.Stderr,
		PerGPU:    o.PerGPU,
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
