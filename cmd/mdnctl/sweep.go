package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/olekukonko/tablewriter"
	"github.com/olekukonko/tablewriter/renderer"
	"github.com/olekukonko/tablewriter/tw"
	"github.com/spf13/cobra"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/results"
	"github.com/mdnctl/mdnctl/slurm"
	"github.com/mdnctl/mdnctl/sweep"
	"github.com/mdnctl/mdnctl/sweeps"
)

func init() { register(newSweepCmd) }

// sweepOptions: `mdnctl sweep [FILE]`. Parsing, expansion, hashing and execution live in package sweep;
// this command wires them to the results directory, the GPUs and the terminal.
type sweepOptions struct {
	g           *globalOptions
	Plan        bool
	Out         string
	Resume      bool
	RetryFailed bool
	Rerun       string
	GPUs        string
	Timeout     time.Duration
	MaxTime     time.Duration
	Backend     string
	DryRun      bool
	Wait        bool
}

// Seams for tests: how workers start (the real launcher; a fake runner in tests) and how GPUs are found.
var (
	sweepStart      = func(python string) sweep.StartFunc { return sweep.LauncherStart(launcher.Options{Python: python}) }
	sweepDetectGPUs = sweep.DetectGPUs
)

func newSweepCmd(g *globalOptions) *cobra.Command {
	o := &sweepOptions{g: g}
	cmd := &cobra.Command{
		Use:   "sweep [FILE]",
		Short: "Run a sweep of kernel variants over every GPU, with correctness gates, baselines and resume",
		Long: `sweep expands a sweep file (TOML, see sweeps/) into grid points and runs each point on a warm Python
worker, one per GPU: a correctness gate against the float64 reference at a small size, then timing
(triton.testing.do_bench on a GPU, wall clock on the CPU). Every point ends as one row of
results/<sweep>/results.jsonl with its status (ok, failed, incorrect, unavailable, timeout), all axis values,
the variant hash, device, versions, median/p20/p80 ms, tokens/s, peak memory and the launcher overhead.

Without FILE it runs the embedded demo sweep (sweeps/demo.toml: CPU-sized, under a minute). FILE may also
name a shipped sweep (demo, chunk_sizes, gating, baselines).

Each point has a stable id (hash of its values) and a variant hash (of its launch spec: op, chunk size,
tiles, warps, stages, constraint, dtype). --resume skips points that already have a row, so a killed
sweep continues where it stopped and a second run with no change does no GPU work. Without --resume, an
existing results.jsonl is moved aside (results.jsonl.prev-<time>) and the sweep starts afresh.`,
		Example: `  mdnctl sweep                                  # the CPU demo
  mdnctl sweep --plan sweeps/baselines.toml     # count and table of the points, nothing runs
  mdnctl sweep --plan --json sweeps/gating.toml # the points as a JSON array
  mdnctl sweep sweeps/baselines.toml --gpus 0,1 --resume
  mdnctl sweep sweeps/baselines.toml --rerun 3f2a9c   # run one variant (or point) again
  mdnctl sweep sweeps/baselines.toml --max-time 9m --resume   # stop starting points after 9 minutes`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd.Context(), args) },
	}
	f := cmd.Flags()
	f.BoolVar(&o.Plan, "plan", false, "print the expanded grid (count and table; a JSON array with --json) and exit")
	f.StringVar(&o.Out, "out", "", "results directory (default results/<sweep name> in the checkout)")
	f.BoolVar(&o.Resume, "resume", false, "skip points that already have a row in the results directory")
	f.BoolVar(&o.RetryFailed, "retry-failed", false, "with --resume: run again points whose latest row is failed or timeout")
	f.StringVar(&o.Rerun, "rerun", "", "run again the points of a variant hash or point id (a prefix of 4+ hex digits)")
	f.StringVar(&o.GPUs, "gpus", "all", `GPUs to use: "all" (every GPU found; the CPU when none), "cpu", or ids such as 0,1`)
	f.DurationVar(&o.Timeout, "timeout", 0, "per point (default: the sweep file's timeout)")
	f.DurationVar(&o.MaxTime, "max-time", 0, "start no point after this long (points in flight finish); resume later with --resume")
	f.StringVar(&o.Backend, "backend", "local", `"local" (workers here) or "slurm" (a job array from the file's [slurm] table)`)
	f.BoolVar(&o.DryRun, "dry-run", false, "with --backend slurm: print the sbatch call and script, submit nothing")
	f.BoolVar(&o.Wait, "wait", false, "with --backend slurm: wait until the array is done")
	return cmd
}

// loadSweep reads FILE, or a shipped sweep of that name, or the embedded demo.
func loadSweep(args []string) (*sweep.File, error) {
	if len(args) == 0 {
		data, _ := sweeps.Lookup(sweeps.Default)
		return sweep.Parse(filepath.Join("sweeps", sweeps.Default), data)
	}
	path := args[0]
	if _, err := os.Stat(path); err == nil {
		return sweep.Load(path)
	}
	if data, ok := sweeps.Lookup(path); ok && !strings.ContainsAny(path, `/\`) {
		name := strings.TrimSuffix(path, ".toml") + ".toml"
		return sweep.Parse(filepath.Join("sweeps", name), data)
	}
	var names []string
	for _, n := range sweeps.Names() {
		names = append(names, strings.TrimSuffix(n, ".toml"))
	}
	return nil, fmt.Errorf("no sweep file %s (shipped sweeps: %s)", path, strings.Join(names, ", "))
}

func (o *sweepOptions) run(ctx context.Context, args []string) error {
	g := o.g
	if o.Backend != "local" && o.Backend != "slurm" {
		return userErrorf("--backend %q: expected local or slurm", o.Backend)
	}
	if o.RetryFailed && !o.Resume {
		return userErrorf("--retry-failed works with --resume")
	}
	if o.Rerun != "" && (len(strings.TrimSpace(o.Rerun)) < 4 || strings.Trim(strings.ToLower(o.Rerun), "0123456789abcdef") != "") {
		return userErrorf("--rerun %q: expected a variant hash or point id (4 or more hex digits)", o.Rerun)
	}
	f, err := loadSweep(args)
	if err != nil {
		return userErrorf("%v", err)
	}
	if f.HasSlurm || o.Backend == "slurm" {
		if _, err := slurm.ParseConfigTOML(f.Path, f.Data); err != nil {
			return userErrorf("%v", err)
		}
	}
	plan, err := f.Expand()
	if err != nil {
		return userErrorf("%v", err)
	}
	if o.Plan {
		return printPlan(g, plan)
	}
	outDir := o.Out
	if outDir == "" {
		outDir = filepath.Join("results", f.Name)
		if g.RepoRoot != "" {
			outDir = filepath.Join(g.RepoRoot, "results", f.Name)
		}
	}
	if o.Backend == "slurm" {
		return o.runSlurm(ctx, f, plan, outDir)
	}
	return o.runLocal(ctx, f, plan, outDir)
}

// pointsToRun applies --rerun / --resume to the plan, given the rows already in the results directory.
func (o *sweepOptions) pointsToRun(plan *sweep.Plan, rows []results.Row) (todo []sweep.Point, skipped int, err error) {
	if o.Rerun != "" {
		seen := map[string]bool{}
		for _, p := range append(sweep.Select(plan.Points, o.Rerun), sweep.PointsFromRows(rows, o.Rerun)...) {
			if !seen[p.ID] {
				seen[p.ID] = true
				todo = append(todo, p)
			}
		}
		if len(todo) == 0 {
			return nil, 0, userErrorf("--rerun %s: no variant or point of %s, nor any row of its results, has that hash", o.Rerun, plan.File.Path)
		}
		return todo, 0, nil
	}
	if o.Resume {
		todo, skipped = sweep.Pending(plan.Points, results.NewIndex(rows), o.RetryFailed)
		return todo, skipped, nil
	}
	return plan.Points, 0, nil
}

// readRows merges every results*.jsonl of dir (local runs and Slurm array tasks), warning about bad lines.
func readRows(dir string, warn io.Writer) ([]results.Row, error) {
	files, err := slurm.RowFiles(dir)
	if err != nil {
		return nil, err
	}
	var all []results.Row
	for _, path := range files {
		rows, info, err := results.Read(path)
		if err != nil {
			return nil, err
		}
		if len(info.BadLines) > 0 {
			fmt.Fprintf(warn, "warning: %s: lines %v are not JSON objects; ignored\n", path, info.BadLines)
		}
		all = append(all, rows...)
	}
	return all, nil
}

func (o *sweepOptions) runLocal(ctx context.Context, f *sweep.File, plan *sweep.Plan, outDir string) error {
	g := o.g
	path := filepath.Join(outDir, results.FileName)
	w, rep, err := results.Open(path)
	if err != nil {
		if errors.Is(err, results.ErrLocked) {
			return userErrorf("%s is being written by another mdnctl sweep; wait for it or use --out", path)
		}
		return err
	}
	defer w.Close()
	if rep.TornBytes > 0 {
		fmt.Fprintf(g.Stderr, "%s: cut off an incomplete last line (%d bytes, kept in %s): a run was killed mid-write\n",
			path, rep.TornBytes, rep.TornFile)
	}
	rows, err := readRows(outDir, g.Stderr)
	if err != nil {
		return err
	}
	if !o.Resume && o.Rerun == "" && len(rows) > 0 {
		files, _ := slurm.RowFiles(outDir)
		if len(files) > 1 {
			return userErrorf("%s holds rows of earlier runs (also from Slurm tasks): pass --resume to continue, or --out DIR", outDir)
		}
		prev := fmt.Sprintf("%s.prev-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if err := w.Rotate(prev); err != nil {
			return err
		}
		if !g.Quiet {
			fmt.Fprintf(g.Stderr, "moved %d earlier rows to %s (use --resume to continue a sweep instead)\n", len(rows), prev)
		}
		rows = nil
	}
	todo, skipped, err := o.pointsToRun(plan, rows)
	if err != nil {
		return err
	}
	if len(todo) == 0 {
		if g.JSON {
			return json.NewEncoder(g.Stdout).Encode(map[string]any{"sweep": f.Name, "results": path,
				"total": len(plan.Points), "skipped": skipped, "ran": 0})
		}
		fmt.Fprintf(g.Stdout, "%s: all %d points already have rows in %s; nothing to run (--retry-failed with --resume runs failed ones again, --rerun HASH one variant)\n",
			f.Name, len(plan.Points), path)
		return nil
	}
	slots, err := sweep.Slots(o.GPUs, o.gpuList(ctx))
	if err != nil {
		return userErrorf("%v", err)
	}
	py, _, err := g.PythonPath()
	if err != nil {
		return userErrorf("%v", err)
	}
	start := sweepStart(py)
	if !g.Quiet && !g.JSON {
		where := make([]string, len(slots))
		for i, s := range slots {
			where[i] = s.Name
		}
		fmt.Fprintf(g.Stderr, "sweep %s: %d points to run (%d already done) on %s -> %s\n", f.Name, len(todo), skipped,
			strings.Join(where, ","), path)
	}
	var stopAfter time.Time
	if o.MaxTime > 0 {
		stopAfter = time.Now().Add(o.MaxTime)
	}
	progress := sweep.NewProgress(g.Stderr, g.IsTTY && !g.JSON, g.Quiet || g.JSON)
	sum, runErr := sweep.Execute(ctx, f, todo, skipped, sweep.Options{
		Slots:     slots,
		Start:     start,
		Sink:      w,
		Timeout:   o.Timeout,
		Progress:  progress,
		LogDir:    filepath.Join(outDir, "logs"),
		Version:   versionString(),
		StopAfter: stopAfter,
	})
	if sum == nil {
		return runErr
	}
	left := len(todo) - sum.Ran
	if g.JSON {
		if err := json.NewEncoder(g.Stdout).Encode(map[string]any{"sweep": f.Name, "results": path, "summary": sum,
			"left": left, "rows": sum.Rows}); err != nil {
			return err
		}
	} else {
		printSweepSummary(g.Stdout, f, plan, sum, path)
	}
	if runErr != nil {
		if errors.Is(runErr, context.Canceled) {
			fmt.Fprintf(g.Stderr, "%d points left; run again with --resume to continue\n", left)
		}
		return runErr
	}
	if left > 0 {
		fmt.Fprintf(g.Stderr, "stopped after --max-time %s: %d points left; run again with --resume\n", o.MaxTime, left)
	}
	return nil
}

func (o *sweepOptions) gpuList(ctx context.Context) []string {
	switch strings.ToLower(strings.TrimSpace(o.GPUs)) {
	case "cpu", "none":
		return nil
	}
	return sweepDetectGPUs(ctx)
}

func (o *sweepOptions) runSlurm(ctx context.Context, f *sweep.File, plan *sweep.Plan, outDir string) error {
	g := o.g
	cfg, err := slurm.ParseConfigTOML(f.Path, f.Data)
	if err != nil {
		return userErrorf("%v", err)
	}
	rows, err := readRows(outDir, g.Stderr)
	if err != nil {
		return err
	}
	if !o.Resume && o.Rerun == "" && len(rows) > 0 {
		return userErrorf("%s already holds %d rows: pass --resume to submit only the points without one, or --out DIR", outDir, len(rows))
	}
	todo, skipped, err := o.pointsToRun(plan, rows)
	if err != nil {
		return err
	}
	if len(todo) == 0 {
		fmt.Fprintf(g.Stdout, "%s: all %d points already have rows in %s; nothing to submit\n", f.Name, len(plan.Points), outDir)
		return nil
	}
	sweepFile := f.Path
	if _, err := os.Stat(sweepFile); err != nil { // an embedded sweep: give Slurm a real file
		if err := os.MkdirAll(outDir, 0o755); err != nil {
			return err
		}
		sweepFile = filepath.Join(outDir, filepath.Base(f.Path))
		if err := os.WriteFile(sweepFile, f.Data, 0o644); err != nil {
			return err
		}
	}
	py, _, err := g.PythonPath()
	if err != nil && cfg.Python == "" {
		return userErrorf("%v", err)
	}
	sp, err := slurm.PrepareSweep(slurm.SweepSubmission{Name: f.Name, OutDir: outDir, Points: slurmSweepPoints(f, todo),
		SweepFile: sweepFile, Config: cfg, RepoRoot: g.RepoRoot, Python: py})
	if err != nil {
		return userErrorf("%v", err)
	}
	if o.DryRun {
		return sp.DryRun(g.Stdout)
	}
	sub, err := sp.Submit(ctx, slurmRunner)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "submitted %s: job %s, %d points (%d already done) in %d array tasks -> %s\n", f.Name, sub.JobID,
		len(todo), skipped, sub.Tasks, outDir)
	if !o.Wait {
		fmt.Fprintf(g.Stdout, "follow it with: mdnctl status %s --watch 10s\n", outDir)
		return nil
	}
	return slurm.WaitRun(ctx, slurmRunner, outDir, 5*time.Second, func(active []string) {
		if st, err := slurm.Status(ctx, slurmRunner, outDir); err == nil && st.Points != nil && !g.Quiet {
			fmt.Fprintf(g.Stderr, "%s: %s, %+v\n", outDir, st.State, *st.Points)
		}
	})
}

// ------------------------------------------------------------------------------------------------ output

func newTable(w io.Writer) *tablewriter.Table {
	return tablewriter.NewTable(w,
		tablewriter.WithRenderer(renderer.NewBlueprint(tw.Rendition{Symbols: tw.NewSymbols(tw.StyleLight)})),
		tablewriter.WithHeaderAutoFormat(tw.Off),
		tablewriter.WithRowAutoWrap(tw.WrapNone),
	)
}

func printPlan(g *globalOptions, plan *sweep.Plan) error {
	if g.JSON {
		out := make([]map[string]any, 0, len(plan.Points))
		for _, p := range plan.Points {
			m := map[string]any{"index": p.Index, "point": p.ID, "variant": p.Variant}
			for k, v := range p.Values {
				m[k] = v
			}
			out = append(out, m)
		}
		enc := json.NewEncoder(g.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	f := plan.File
	fmt.Fprintf(g.Stdout, "%s (%s): %d points", f.Name, f.Path, len(plan.Points))
	var notes []string
	if plan.Filtered > 0 {
		notes = append(notes, fmt.Sprintf("%d dropped by where", plan.Filtered))
	}
	if plan.Duplicates > 0 {
		notes = append(notes, fmt.Sprintf("%d duplicates dropped", plan.Duplicates))
	}
	variants := map[string]bool{}
	for _, p := range plan.Points {
		variants[p.Variant] = true
	}
	notes = append(notes, fmt.Sprintf("%d variants", len(variants)), "job "+f.Job, "timeout "+f.Timeout.String())
	fmt.Fprintf(g.Stdout, " (%s)\n", strings.Join(notes, ", "))
	if f.Description != "" {
		fmt.Fprintln(g.Stdout, f.Description)
	}
	cols := plan.Columns()
	t := newTable(g.Stdout)
	t.Header(append([]string{"#", "point", "variant"}, cols...))
	for _, p := range plan.Points {
		row := []string{fmt.Sprint(p.Index + 1), p.ID, p.Variant}
		for _, c := range cols {
			row = append(row, fmt.Sprint(p.Values[c]))
		}
		if err := t.Append(row); err != nil {
			return err
		}
	}
	return t.Render()
}

func fmtFloat(v any, format string) string {
	if x, ok := v.(float64); ok {
		return fmt.Sprintf(format, x)
	}
	return "-"
}

func printSweepSummary(w io.Writer, f *sweep.File, plan *sweep.Plan, sum *sweep.Summary, path string) {
	rows := append([]results.Row(nil), sum.Rows...)
	index := map[string]int{}
	for _, p := range plan.Points {
		index[p.ID] = p.Index
	}
	sort.SliceStable(rows, func(i, j int) bool {
		return index[results.Str(rows[i], "point")] < index[results.Str(rows[j], "point")]
	})
	if len(rows) > 0 && f.Generic {
		printGenericSummary(w, plan, rows)
	} else if len(rows) > 0 {
		t := newTable(w)
		t.Header([]string{"status", "op", "cs", "constraint", "dtype", "mode", "B", "T", "H", "K", "V", "median ms",
			"p20-p80 ms", "tokens/s", "peak GiB", "variant"})
		for _, r := range rows {
			p20p80 := "-"
			if a, ok := r["p20_ms"].(float64); ok {
				p20p80 = fmt.Sprintf("%.3f-%s", a, fmtFloat(r["p80_ms"], "%.3f"))
			}
			tps := "-"
			if x, ok := r["tokens_per_s"].(float64); ok {
				tps = fmt.Sprintf("%.4g", x)
			}
			_ = t.Append([]string{results.Str(r, "status"), fmt.Sprint(r["op"]), fmt.Sprint(r["chunk_size"]),
				fmt.Sprint(r["constraint"]), fmt.Sprint(r["dtype"]), fmt.Sprint(r["mode"]), fmt.Sprint(r["B"]),
				fmt.Sprint(r["T"]), fmt.Sprint(r["H"]), fmt.Sprint(r["K"]), fmt.Sprint(r["V"]),
				fmtFloat(r["median_ms"], "%.3f"), p20p80, tps, fmtFloat(r["peak_mem_gib"], "%.3f"),
				results.Str(r, "variant")})
		}
		_ = t.Render()
	}
	var st []string
	for _, k := range []string{results.StatusOK, results.StatusFailed, results.StatusIncorrect, results.StatusUnavailable, results.StatusTimeout} {
		if n := sum.Statuses[k]; n > 0 {
			st = append(st, fmt.Sprintf("%d %s", n, k))
		}
	}
	fmt.Fprintf(w, "%s: %d points run in %.1fs (%s); %d skipped as done; rows in %s\n", f.Name, sum.Ran, sum.Wall,
		strings.Join(st, ", "), sum.Skipped, path)
	if len(sum.Workers) > 0 {
		oh := sum.Overhead
		fmt.Fprintf(w, "launcher overhead: worker spawn %.2fs + imports %.2fs per worker start (median of %d starts, %d restarts)\n",
			oh.SpawnS, oh.ImportS, len(sum.Workers), sum.Restarts)
		if oh.WarmWallS > 0 {
			gates := ""
			if oh.WarmChecks > 0 {
				gates = fmt.Sprintf(" (%d of %d gates cached", oh.WarmChecksCached, oh.WarmChecks)
				if oh.WarmChecksCached < oh.WarmChecks {
					gates += fmt.Sprintf("; a gate that ran %.3fs", oh.WarmCheckFreshS)
				}
				gates += ")"
			}
			fmt.Fprintf(w, "warm point (medians): %.3fs wall, of which %.1f ms (%.1f%%) outside the Python job; in it the gate %.3fs%s, "+
				"the first call (compile or cache hit) %.3fs, the timed loop %.0f%% of the wall\n",
				oh.WarmWallS, oh.LauncherMS, oh.LauncherPct, oh.WarmCheckS, gates, oh.WarmFirstS, oh.WarmTimedPct)
		}
	}
	if len(sum.Overhead.Slowest) > 0 && sum.Ran > len(sum.Overhead.Slowest) {
		var parts []string
		for _, sp := range sum.Overhead.Slowest {
			cold := ""
			if sp.Cold {
				cold = ", first of its worker"
			}
			parts = append(parts, fmt.Sprintf("%s %.1fs (%s; gate %.1fs, first call %.1fs%s)", sp.Label, sp.WallS,
				sp.Status, sp.CheckS, sp.FirstCallS, cold))
		}
		fmt.Fprintf(w, "slowest points: %s\n", strings.Join(parts, "; "))
	}
}

// printGenericSummary is the table of a task other than bench/verify: the point's values, then the usual
// result metrics that any row has.
func printGenericSummary(w io.Writer, plan *sweep.Plan, rows []results.Row) {
	cols := plan.Columns()
	var metrics []string
	for _, m := range []string{"accuracy", "loss", "perplexity", "median_ms", "tokens_per_s"} {
		for _, r := range rows {
			if _, ok := r[m]; ok {
				metrics = append(metrics, m)
				break
			}
		}
	}
	t := newTable(w)
	t.Header(append(append([]string{"status"}, cols...), metrics...))
	for _, r := range rows {
		line := []string{results.Str(r, "status")}
		for _, c := range cols {
			line = append(line, fmt.Sprint(r[c]))
		}
		for _, m := range metrics {
			line = append(line, fmtFloat(r[m], "%.4g"))
		}
		_ = t.Append(line)
	}
	_ = t.Render()
}
