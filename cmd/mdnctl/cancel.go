package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mdnctl/mdnctl/slurm"
)

func init() { register(newCancelCmd) }

type cancelOptions struct {
	Wait time.Duration
}

func newCancelCmd(g *globalOptions) *cobra.Command {
	o := &cancelOptions{}
	cmd := &cobra.Command{
		Use:   "cancel RUN_DIR|JOB_ID...",
		Short: "Cancel the Slurm jobs of a sweep or training run (scancel)",
		Long: `cancel runs scancel on every queued or running job of a run directory (or on the given job ids).
Rows already written stay; resuming the sweep with --resume submits only the points without a row.`,
		Example: "  mdnctl cancel results/demo\n  mdnctl cancel 1234",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCancel(cmd, g, o, args)
		},
	}
	cmd.Flags().DurationVar(&o.Wait, "wait", 30*time.Second, "wait up to this long for the jobs to leave the queue (0 = do not wait)")
	return cmd
}

func runCancel(cmd *cobra.Command, g *globalOptions, o *cancelOptions, args []string) error {
	ctx := cmd.Context()
	var ids []string
	for _, a := range args {
		if _, err := os.Stat(a); err != nil {
			if !isJobID(a) {
				return userErrorf("cancel: %s: no such run directory or job id", a)
			}
			ids = append(ids, a)
			continue
		}
		act, err := slurm.ActiveJobs(ctx, slurmRunner, a)
		if err != nil {
			return userErrorf("cancel: %v", err)
		}
		if len(act) == 0 && !g.Quiet {
			fmt.Fprintf(g.Stderr, "cancel: %s: no queued or running job\n", a)
		}
		ids = append(ids, act...)
	}
	if len(ids) == 0 {
		return nil
	}
	if err := slurm.Cancel(ctx, slurmRunner, ids); err != nil {
		return err
	}
	if !g.Quiet {
		fmt.Fprintf(g.Stdout, "cancelled job(s) %s\n", strings.Join(ids, " "))
	}
	if o.Wait > 0 {
		wctx, stop := context.WithTimeout(ctx, o.Wait)
		defer stop()
		if err := slurm.Wait(wctx, slurmRunner, ids, time.Second, nil); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("cancel: job(s) %s still in the queue after %s: %w", strings.Join(ids, " "), o.Wait, err)
		}
	}
	return nil
}
