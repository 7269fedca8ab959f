package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mdnctl/mdnctl/report"
)

func init() { register(newReportCmd) }

// reportOptions are the flags of `mdnctl report`.
type reportOptions struct {
	Rows     []string
	Cols     []string
	Metric   string
	Baseline string
	Agg      string
	Better   string
	Format   string
	Filters  []string
	Group    []string
	Merge    []string
	Axes     []string
	PlotDir  string
	Plots    []string
	ChunkRef float64
	HTMLDir  string
	Title    string
	AllRows  bool

	now     func() time.Time // injected by tests
	cmdline string           // recorded on the HTML page
}

func newReportCmd(g *globalOptions) *cobra.Command {
	o := &reportOptions{now: time.Now}
	cmd := &cobra.Command{
		Use:   "report [FILE|DIR|GLOB ...]",
		Short: "Tables, plots and an HTML page from sweep, training, MQAR and stability results",
		Long: `report reads result rows (JSONL, JSON or CSV; directories are searched for *.jsonl and *.csv) and prints a
pivot table of one metric: --rows and --cols name the fields that make its rows and columns, each cell holds
the median over repeats with its spread ([p20–p80] of one run or [min–max] across repeats) and, with
--baseline, the ratio to the baseline's cell. Failed, incorrect, unavailable and timed-out points are
marked, not dropped. Rows from different devices or software versions get separate tables.

--plot DIR writes PNG and SVG figures (throughput vs sequence length, speed-up vs chunk size, training loss
and tokens/s, MQAR accuracy vs width, the stability region), each for the rows that support it.
--html DIR writes DIR/index.html: one self-contained page with the tables, the figures and run metadata.`,
		Example: `  mdnctl report results/baselines --rows op --cols T --metric fwdbwd_ms --baseline gdn
  mdnctl report results/chunk_sizes --rows constraint --cols chunk_size --metric fwdbwd_ms --baseline 64
  mdnctl report results/mqar --rows model,constraint --cols d_model --metric accuracy --merge lr --agg max
  mdnctl report 'results/*/results.jsonl' --filter device="NVIDIA H100 80GB HBM3" --format markdown
  mdnctl report runs/ --plot docs/plots --html out/report`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.cmdline = commandLine(cmd, args)
			return runReport(cmd, g, o, args)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.Rows, "rows", nil, "fields whose values make the table rows (default: op, model or task)")
	f.StringSliceVar(&o.Cols, "cols", nil, "fields whose values make the columns (default: T when present)")
	f.StringVar(&o.Metric, "metric", "", "numeric field shown in the cells (default: fwdbwd_ms, fwd_ms, ms, tokens_per_s, accuracy or loss)")
	f.StringVar(&o.Baseline, "baseline", "", "row or column value (or field=value) to divide every cell by")
	f.StringVar(&o.Agg, "agg", "median", "how repeats combine: median, mean, min, max or last (by step)")
	f.StringVar(&o.Better, "better", "", "lower or higher (default: from the metric's name); colours the ratios")
	f.StringVar(&o.Format, "format", "", "table, markdown, csv or json (default: table; json with --json)")
	f.StringArrayVar(&o.Filters, "filter", nil, "keep rows with key=value, key=v1,v2 or key!=value (repeatable)")
	f.StringSliceVar(&o.Group, "group", nil, "fields that split tables and plots (default: device and version fields; 'none' to mix)")
	f.StringSliceVar(&o.Merge, "merge", nil, "axes to aggregate over inside a cell (e.g. lr with --agg max) instead of splitting rows")
	f.StringSliceVar(&o.Axes, "axes", nil, "fields that identify a variant (default: "+strings.Join(report.DefaultAxes, ",")+")")
	f.StringVar(&o.PlotDir, "plot", "", "write PNG and SVG figures into this directory")
	f.StringSliceVar(&o.Plots, "plots", nil, "figures to make: "+strings.Join(report.PlotKinds, ",")+" (default: all the rows support)")
	f.Float64Var(&o.ChunkRef, "chunk-ref", 0, "reference chunk size of the speed-up figure (default 64, else the smallest)")
	f.StringVar(&o.HTMLDir, "html", "", "write a self-contained HTML page to DIR/index.html")
	f.StringVar(&o.Title, "title", "mdnctl report", "title of the HTML page")
	f.BoolVar(&o.AllRows, "all-rows", false, "keep every row of a point measured more than once (default: its latest row)")
	return cmd
}

func runReport(_ *cobra.Command, g *globalOptions, o *reportOptions, args []string) error {
	if len(args) == 0 {
		args = []string{"results"}
	}
	format := o.Format
	if format == "" {
		format = "table"
		if g.JSON {
			format = "json"
		}
	}
	if !slices.Contains(report.Formats, format) && format != "md" {
		return userErrorf("unknown --format %q (expected one of %s)", format, strings.Join(report.Formats, ", "))
	}
	if len(o.Plots) > 0 && o.PlotDir == "" && o.HTMLDir == "" {
		return userErrorf("--plots chooses figures for --plot DIR or --html DIR; give one of them")
	}
	ds, err := report.Load(args)
	if err != nil {
		return userErrorf("%v", err)
	}
	for _, w := range ds.Warnings {
		fmt.Fprintln(g.Stderr, "warning: "+w)
	}
	var filters []report.Filter
	for _, s := range o.Filters {
		f, err := report.ParseFilter(s)
		if err != nil {
			return userErrorf("%v", err)
		}
		filters = append(filters, f)
	}
	rows, err := report.ApplyFilters(ds.Rows, filters)
	if err != nil {
		return userErrorf("%v", err)
	}
	supersedeNote := ""
	if !o.AllRows {
		rows, supersedeNote = report.Supersede(rows)
	}

	wantTable := o.Metric != "" || len(o.Rows) > 0 || len(o.Cols) > 0 || o.Baseline != "" || (o.PlotDir == "" && o.HTMLDir == "")
	rep, err := report.Pivot(rows, report.Options{
		Rows: o.Rows, Cols: o.Cols, Metric: o.Metric, Baseline: o.Baseline, Agg: o.Agg, Better: o.Better,
		Group: o.Group, Axes: o.Axes, Merge: o.Merge,
	})
	tableNote := ""
	if err != nil {
		if wantTable {
			return userErrorf("%v", err)
		}
		tableNote = err.Error()
		rep = nil
	}
	if rep != nil && supersedeNote != "" {
		rep.Notes = append(rep.Notes, supersedeNote)
	}
	var figs []*report.Figure
	if o.PlotDir != "" || o.HTMLDir != "" {
		figs, err = report.BuildPlots(rows, report.PlotOptions{Kinds: o.Plots, Metric: o.Metric, ChunkRef: o.ChunkRef, Group: o.Group})
		if err != nil {
			if len(o.Plots) > 0 || rep == nil {
				return userErrorf("%v", err)
			}
			fmt.Fprintln(g.Stderr, "note: no plots: "+err.Error())
		}
	}
	if rep != nil {
		color := g.IsTTY && format == "table" && os.Getenv("NO_COLOR") == ""
		if err := report.Render(g.Stdout, rep, format, color); err != nil {
			return err
		}
	}

	if o.PlotDir != "" {
		for _, f := range figs {
			if err := f.Save(o.PlotDir); err != nil {
				return fmt.Errorf("writing plots: %w", err)
			}
			if !g.Quiet {
				fmt.Fprintf(g.Stderr, "wrote %s\n", strings.Join(f.Files, ", "))
			}
		}
	}
	if o.HTMLDir != "" {
		pg := &report.Page{
			Title: o.Title, Command: o.cmdline, Version: versionString(), Inputs: ds.Files,
			Meta: report.RunMetadata(rows), Warnings: ds.Warnings, Report: rep, TableNote: tableNote, Figures: figs,
		}
		if o.now != nil {
			pg.Generated = o.now().UTC().Format(time.RFC3339)
		}
		var buf bytes.Buffer
		if err := report.WriteHTML(&buf, pg); err != nil {
			return fmt.Errorf("writing HTML: %w", err)
		}
		if err := os.MkdirAll(o.HTMLDir, 0o755); err != nil {
			return err
		}
		path := filepath.Join(o.HTMLDir, "index.html")
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			return err
		}
		if !g.Quiet {
			fmt.Fprintf(g.Stderr, "wrote %s (%d tables, %d plots)\n", path, tableCount(rep), len(figs))
		}
	}
	return nil
}

// commandLine rebuilds the command as typed (arguments and the flags that were set), for the HTML page.
func commandLine(cmd *cobra.Command, args []string) string {
	parts := []string{cmd.CommandPath()}
	for _, a := range args {
		parts = append(parts, shellQuote(a))
	}
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if sv, ok := f.Value.(pflag.SliceValue); ok && f.Value.Type() == "stringArray" {
			for _, v := range sv.GetSlice() {
				parts = append(parts, "--"+f.Name+"="+shellQuote(v))
			}
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			parts = append(parts, "--"+f.Name+"="+shellQuote(strings.Join(sv.GetSlice(), ",")))
			return
		}
		parts = append(parts, "--"+f.Name+"="+shellQuote(f.Value.String()))
	})
	return strings.Join(parts, " ")
}

func shellQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t'\"$*?[]{}()<>|&;`\\!#~") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func tableCount(rep *report.Report) int {
	if rep == nil {
		return 0
	}
	return len(rep.Tables)
}
