package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/olekukonko/tablewriter"
	"github.com/spf13/cobra"

	"github.com/mdnctl/mdnctl/slurm"
)

func init() { register(newStatusCmd) }

// slurmRunner runs sbatch/squeue/scancel; tests swap in a fake.
var slurmRunner slurm.Runner = slurm.ExecRunner{}

type statusOptions struct {
	Watch time.Duration
	All   bool
}

func newStatusCmd(g *globalOptions) *cobra.Command {
	o := &statusOptions{}
	cmd := &cobra.Command{
		Use:   "status RUN_DIR|JOB_ID...",
		Short: "Show the state of Slurm jobs of a sweep or training run",
		Long: `status shows what Slurm and the run directory say about jobs submitted with --backend slurm:
each array task's state (from squeue, or from the exit record the task leaves, since squeue forgets
finished jobs after MinJobAge and clusters without accounting have no sacct), and for sweeps the
points done, failed (with their reasons) and still pending.

RUN_DIR is the sweep's results directory (e.g. results/demo) or the training run directory.
A bare number is a Slurm job id.`,
		Example: "  mdnctl status results/demo\n  mdnctl status results/demo --watch 5s\n  mdnctl status 1234 --json",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for {
				active, err := runStatus(cmd, g, o, args)
				if err != nil || o.Watch <= 0 || !active {
					return err
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(o.Watch):
				}
			}
		},
	}
	cmd.Flags().DurationVar(&o.Watch, "watch", 0, "poll at this interval until nothing is queued or running")
	cmd.Flags().BoolVar(&o.All, "all", false, "list every task, not only those that are not COMPLETED")
	return cmd
}

func isJobID(s string) bool { return s != "" && strings.Trim(s, "0123456789") == "" }

func runStatus(cmd *cobra.Command, g *globalOptions, o *statusOptions, args []string) (bool, error) {
	ctx := cmd.Context()
	var out []any
	anyActive := false
	for _, a := range args {
		if isJobID(a) {
			if _, err := os.Stat(a); err != nil { // a directory named like a number wins
				q, err := slurm.QueryQueue(ctx, slurmRunner, []string{a})
				if err != nil {
					return false, err
				}
				ts := make([]slurm.TaskState, 0, len(q))
				for _, t := range q {
					ts = append(ts, t)
					anyActive = anyActive || t.Active()
				}
				sort.Slice(ts, func(i, j int) bool { return ts[i].Task < ts[j].Task })
				if g.JSON {
					out = append(out, map[string]any{"job_id": a, "tasks": ts})
				} else {
					printJobTasks(g, a, ts)
				}
				continue
			}
		}
		if _, err := os.Stat(a); err != nil {
			return false, userErrorf("status: %s: no such run directory or job id", a)
		}
		rs, err := slurm.Status(ctx, slurmRunner, a)
		if err != nil {
			return false, userErrorf("status: %v", err)
		}
		anyActive = anyActive || rs.Active
		if g.JSON {
			out = append(out, rs)
		} else {
			printRunStatus(g, a, rs, o.All)
		}
	}
	if g.JSON {
		enc := json.NewEncoder(g.Stdout)
		if o.Watch > 0 {
			return anyActive, enc.Encode(out) // one line per poll
		}
		enc.SetIndent("", "  ")
		return anyActive, enc.Encode(out)
	}
	return anyActive, nil
}

func printJobTasks(g *globalOptions, id string, ts []slurm.TaskState) {
	if len(ts) == 0 {
		fmt.Fprintf(g.Stdout, "job %s: not in the queue (finished more than MinJobAge ago, or never submitted); give the run directory for its exit records\n", id)
		return
	}
	rows := [][]string{}
	for _, t := range ts {
		rows = append(rows, taskRow(t))
	}
	fmt.Fprintf(g.Stdout, "job %s\n", id)
	statusTable(g, []string{"task", "state", "exit", "node", "reason"}, rows)
}

func taskRow(t slurm.TaskState) []string {
	task := fmt.Sprint(t.Task)
	if t.Task < 0 {
		task = "-"
	}
	exit := ""
	if t.ExitCode != nil {
		exit = fmt.Sprint(*t.ExitCode)
	}
	return []string{task, t.State, exit, t.Node, t.Reason}
}

func printRunStatus(g *globalOptions, arg string, rs *slurm.RunStatus, all bool) {
	w := g.Stdout
	head := fmt.Sprintf("%s: %s %s", arg, rs.Kind, rs.State)
	if p := rs.Points; p != nil {
		head += fmt.Sprintf(": %d/%d points done", p.Done, p.Total)
		if len(p.Status) > 0 {
			head += " (" + countString(p.Status) + ")"
		}
		if p.Pending > 0 {
			head += fmt.Sprintf(", %d pending", p.Pending)
		}
	}
	fmt.Fprintln(w, head)
	if rs.QueueError != "" {
		fmt.Fprintf(w, "  squeue failed (%s); states below come from the tasks' exit records\n", rs.QueueError)
	}
	for _, s := range rs.Submissions {
		kind := fmt.Sprintf("%d task(s)", s.Tasks)
		if s.Kind == "sweep" {
			kind = fmt.Sprintf("array of %d task(s), %d point(s)", s.Tasks, s.Points)
			if s.Concurrency > 0 {
				kind += fmt.Sprintf(", %d at a time", s.Concurrency)
			}
		}
		if s.Resume {
			kind += ", resume"
		}
		fmt.Fprintf(w, "  job %s (%s): %s\n", s.JobID, kind, countString(s.Counts))
		var rows [][]string
		for _, t := range s.TaskStates {
			if all || t.State != "COMPLETED" || (t.ExitCode != nil && *t.ExitCode != 0) {
				rows = append(rows, taskRow(t))
			}
		}
		if len(rows) > 0 && len(rows) <= 50 {
			statusTable(g, []string{"task", "state", "exit", "node", "reason"}, rows)
		}
		for _, r := range s.Ranks {
			line := fmt.Sprintf("    rank %d: %s", r.Rank, r.Status)
			if r.Error != "" {
				line += ": " + r.Error
			}
			fmt.Fprintln(w, line)
		}
	}
	if len(rs.Failures) > 0 {
		fmt.Fprintf(w, "  points not ok:\n")
		var rows [][]string
		for _, f := range rs.Failures {
			rows = append(rows, []string{f.Point, f.Status, oneLine(f.Message, 100)})
		}
		statusTable(g, []string{"point", "status", "message"}, rows)
	}
	if !rs.Active && rs.State == "INCOMPLETE" {
		fmt.Fprintf(w, "  %d point(s) have no row: resume the sweep with --resume to submit only those\n", rs.Points.Pending)
	}
}

func oneLine(s string, n int) string {
	s = strings.SplitN(s, "\n", 2)[0]
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func countString(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}

// statusTable: a boxed table on a terminal, aligned plain columns otherwise (indented under the run line).
func statusTable(g *globalOptions, header []string, rows [][]string) {
	if g.IsTTY {
		t := tablewriter.NewWriter(g.Stdout)
		t.Header(toAny(header)...)
		for _, r := range rows {
			_ = t.Append(toAny(r)...)
		}
		_ = t.Render()
		return
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 0, 2, ' ', 0)
	writeRow(tw, header)
	for _, r := range rows {
		writeRow(tw, r)
	}
	_ = tw.Flush()
}

func writeRow(w io.Writer, r []string) { fmt.Fprintln(w, "    "+strings.Join(r, "\t")) }

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
