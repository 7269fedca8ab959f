package report

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

// golden compares got with testdata/golden/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run: go test ./report -run Golden -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test ./report -run Golden -update, then review the diff)\n--- got ---\n%s\n--- want ---\n%s", name, got, want)
	}
}

func TestGoldenFormats(t *testing.T) {
	cases := []struct {
		name   string
		inputs []string
		opts   Options
		format string
		color  bool
		all    bool // keep superseded rows (--all-rows)
	}{
		{"baselines.table.txt", []string{"testdata/baselines"}, Options{Rows: []string{"op"}, Cols: []string{"T"}, Metric: "fwdbwd_ms", Baseline: "gdn"}, "table", false, false},
		{"baselines.table-color.txt", []string{"testdata/baselines"}, Options{Rows: []string{"op"}, Cols: []string{"T"}, Metric: "fwdbwd_ms", Baseline: "gdn"}, "table", true, false},
		{"baselines.md", []string{"testdata/baselines"}, Options{Rows: []string{"op"}, Cols: []string{"T"}, Metric: "fwdbwd_ms", Baseline: "gdn"}, "markdown", false, false},
		{"baselines.csv", []string{"testdata/baselines"}, Options{Rows: []string{"op"}, Cols: []string{"T"}, Metric: "fwdbwd_ms", Baseline: "gdn"}, "csv", false, false},
		{"baselines.json", []string{"testdata/baselines"}, Options{Rows: []string{"op"}, Cols: []string{"T"}, Metric: "fwdbwd_ms", Baseline: "gdn"}, "json", false, false},
		{"baselines-tokens.table.txt", []string{"testdata/baselines"}, Options{Metric: "tokens_per_s", Baseline: "T=1024"}, "table", false, false},
		{"mixed.md", []string{"testdata/mixed"}, Options{Baseline: "gdn"}, "markdown", false, false},
		{"chunks.table.txt", []string{"testdata/chunks"}, Options{Rows: []string{"constraint"}, Cols: []string{"chunk_size"}, Baseline: "64"}, "table", false, false},
		{"chunks.csv", []string{"testdata/chunks"}, Options{Rows: []string{"op"}}, "csv", false, false},
		{"mqar.md", []string{"testdata/mqar"}, Options{Rows: []string{"model", "constraint"}, Cols: []string{"d_model"}, Metric: "accuracy", Merge: []string{"lr"}, Agg: "max", Baseline: "gdn"}, "markdown", false, false},
		{"train.md", []string{"testdata/train"}, Options{Metric: "loss", Agg: "last"}, "markdown", false, false},
		{"sweep.md", []string{"testdata/sweep"}, Options{Baseline: "gdn"}, "markdown", false, false},
		{"baselines-allrows.md", []string{"testdata/baselines"}, Options{Baseline: "gdn"}, "markdown", false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rows := load(t, c.inputs...)
			if !c.all {
				rows, _ = Supersede(rows)
			}
			rep, err := Pivot(rows, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := Render(&buf, rep, c.format, c.color); err != nil {
				t.Fatal(err)
			}
			golden(t, c.name, buf.Bytes())
		})
	}
}
