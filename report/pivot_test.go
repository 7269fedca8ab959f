package report

import (
	"math"
	"strings"
	"testing"
)

func load(t *testing.T, paths ...string) []Row {
	t.Helper()
	ds, err := Load(paths)
	if err != nil {
		t.Fatal(err)
	}
	return ds.Rows
}

func findLine(t *testing.T, tb *Table, key ...string) *Line {
	t.Helper()
	for _, l := range tb.Lines {
		if strings.Join(l.Key, "/") == strings.Join(key, "/") {
			return l
		}
	}
	t.Fatalf("no line %v", key)
	return nil
}

func colIndex(t *testing.T, tb *Table, val ...string) int {
	t.Helper()
	for i, c := range tb.Columns {
		if strings.Join(c, "/") == strings.Join(val, "/") {
			return i
		}
	}
	t.Fatalf("no column %v", val)
	return -1
}

func TestPivotBaselineRepeatsAndMarks(t *testing.T) {
	rows := load(t, "testdata/baselines")
	rep, err := Pivot(rows, Options{Rows: []string{"op"}, Cols: []string{"T"}, Metric: "fwdbwd_ms", Baseline: "gdn"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Tables) != 1 {
		t.Fatalf("one device → one table, got %d", len(rep.Tables))
	}
	tb := rep.Tables[0]
	if !tb.Lines[0].Baseline || tb.Lines[0].Key[0] != "gdn" {
		t.Fatalf("baseline line first: %+v", tb.Lines[0])
	}
	c4096 := colIndex(t, tb, "4096")
	// mdn at T=4096 has three repeats (factors 1, 1.03, 1.06 of 10.44): median and min–max across repeats
	mdn := findLine(t, tb, "mdn").Cells[c4096]
	if mdn.N != 3 || mdn.Spread != "min-max" {
		t.Fatalf("mdn@4096: want 3 repeats with min-max spread, got %+v", mdn)
	}
	if math.Abs(*mdn.Value-10.7532) > 1e-3 || math.Abs(*mdn.Lo-10.44) > 1e-3 || math.Abs(*mdn.Hi-11.0664) > 1e-3 {
		t.Fatalf("mdn@4096 median/min/max: %v %v %v", *mdn.Value, *mdn.Lo, *mdn.Hi)
	}
	gdn := tb.Lines[0].Cells[c4096]
	if gdn.Spread != "p20-p80" || *gdn.Lo != 8.439 || *gdn.Hi != 9.048 {
		t.Fatalf("a single run's spread comes from its own p20/p80: %+v", gdn)
	}
	if math.Abs(*mdn.Ratio - *mdn.Value / *gdn.Value) > 1e-12 {
		t.Fatalf("ratio = value / baseline: %v", *mdn.Ratio)
	}
	if tb.Lines[0].Cells[c4096].Ratio != nil {
		t.Fatal("the baseline itself gets no ratio")
	}
	// failed, unavailable cells are marked, not dropped
	if c := findLine(t, tb, "sdpa").Cells[colIndex(t, tb, "8192")]; c.Status != "failed" || c.Value != nil || len(c.Reasons) != 1 || !strings.Contains(c.Reasons[0], "out of memory") {
		t.Fatalf("sdpa@8192 must be failed with its reason: %+v", c)
	}
	if c := findLine(t, tb, "kda").Cells[0]; c.Status != "unavailable" {
		t.Fatalf("kda must be unavailable: %+v", c)
	}
	if rep.Better != "lower" || rep.Unit != "ms" {
		t.Fatalf("direction and unit from the metric name: %q %q", rep.Better, rep.Unit)
	}
}

func TestPivotErrors(t *testing.T) {
	rows := load(t, "testdata/baselines")
	_, err := Pivot(rows, Options{Rows: []string{"op"}, Metric: "fwd_bwd_ms"})
	if err == nil || !strings.Contains(err.Error(), `unknown metric "fwd_bwd_ms"`) || !strings.Contains(err.Error(), "fwdbwd_ms") || !strings.Contains(err.Error(), "tokens_per_s") {
		t.Fatalf("unknown metric must list the known ones: %v", err)
	}
	_, err = Pivot(rows, Options{Rows: []string{"opp"}})
	if err == nil || !strings.Contains(err.Error(), `no row has field "opp"`) {
		t.Fatalf("unknown row field: %v", err)
	}
	_, err = Pivot(rows, Options{Baseline: "rwkv"})
	if err == nil || !strings.Contains(err.Error(), "matches no value") || !strings.Contains(err.Error(), "op has gdn") {
		t.Fatalf("unknown baseline must list values: %v", err)
	}
	_, err = Pivot(nil, Options{})
	if err == nil || !strings.Contains(err.Error(), "empty selection") {
		t.Fatalf("empty: %v", err)
	}
	_, err = Pivot(rows, Options{Agg: "mode"})
	if err == nil || !strings.Contains(err.Error(), "unknown aggregation") {
		t.Fatalf("bad agg: %v", err)
	}
}

func TestPivotNeverMixesDevices(t *testing.T) {
	rows := load(t, "testdata/mixed")
	rep, err := Pivot(rows, Options{Baseline: "gdn"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Tables) != 2 {
		t.Fatalf("two devices/torch versions → two tables, got %d", len(rep.Tables))
	}
	for _, tb := range rep.Tables {
		for _, l := range tb.Lines {
			for _, c := range l.Cells {
				if c.Total != 1 {
					t.Fatalf("a cell mixes %d rows across machines", c.Total)
				}
			}
		}
	}
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "2 device/version groups (device, versions.torch differ)") {
		t.Fatalf("the report must say it split by device: %q", rep.Notes)
	}
	// --group none is the explicit opt-in to mixing, and it says so
	rep, err = Pivot(rows, Options{Group: []string{"none"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Tables) != 1 || !strings.Contains(strings.Join(rep.Notes, "\n"), "--group none") {
		t.Fatalf("--group none: %d tables, notes %q", len(rep.Tables), rep.Notes)
	}
}

func TestPivotSplitsMixedVariantsAndMerges(t *testing.T) {
	rows := load(t, "testdata/chunks")
	rep, err := Pivot(rows, Options{Rows: []string{"op"}, Cols: []string{"T"}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.RowKeys, ",") != "op,constraint,chunk_size" {
		t.Fatalf("cells mixing chunk sizes and constraints must split rows by them, got row keys %v", rep.RowKeys)
	}
	if len(rep.Tables[0].Lines) != 12 {
		t.Fatalf("12 variants → 12 lines, got %d", len(rep.Tables[0].Lines))
	}
	if c := findLine(t, rep.Tables[0], "mdn", "trig", "128").Cells[0]; c.Status != "incorrect" {
		t.Fatalf("trig/128 is incorrect: %+v", c)
	}
	mq := load(t, "testdata/mqar")
	rep, err = Pivot(mq, Options{Rows: []string{"model", "constraint"}, Cols: []string{"d_model"}, Metric: "accuracy",
		Merge: []string{"lr"}, Agg: "max"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.RowKeys, ",") != "model,constraint,seq_len,num_pairs" {
		t.Fatalf("lr merged, the task shape still splits: %v", rep.RowKeys)
	}
	// best over 4 learning rates
	l := findLine(t, rep.Tables[0], "mdn", "trig", "512", "64")
	c := l.Cells[colIndex(t, rep.Tables[0], "256")]
	var want float64
	for _, r := range mq {
		if m, _ := r.Str("model"); m != "mdn" {
			continue
		}
		if s, _ := r.Str("constraint"); s != "trig" {
			continue
		}
		if L, _ := r.Num("seq_len"); L != 512 {
			continue
		}
		if d, _ := r.Num("d_model"); d != 256 {
			continue
		}
		a, _ := r.Num("accuracy")
		want = math.Max(want, a)
	}
	if c.N != 4 || *c.Value != want {
		t.Fatalf("max over 4 lrs: got %v (n=%d), want %v", *c.Value, c.N, want)
	}
}

func TestPivotTrainingLastAndPerStepFields(t *testing.T) {
	rows := load(t, "testdata/train")
	rep, err := Pivot(rows, Options{Metric: "loss", Agg: "last"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.RowKeys, ",") != "model" {
		t.Fatalf("lr changes every step (a schedule): it must not split rows, got %v", rep.RowKeys)
	}
	for _, l := range rep.Tables[0].Lines {
		c := l.Cells[0]
		var last float64
		for _, r := range rows {
			if m, _ := r.Str("model"); m == l.Key[0] {
				if s, _ := r.Num("step"); s == 60 {
					last, _ = r.Num("loss")
				}
			}
		}
		if c.N != 60 || *c.Value != last {
			t.Fatalf("%s: last loss by step = %v, got %v", l.Key[0], last, *c.Value)
		}
	}
}

func TestFormatNumber(t *testing.T) {
	for in, want := range map[float64]string{
		0: "0", 1: "1", 2.175: "2.175", 17.4: "17.4", 20.8804: "20.88", 1234.6: "1235", 55837: "55837",
		123456: "123.5k", 1883218.4: "1.883M", 2.5e9: "2.5G", 0.0001234: "1.23e-04", 0.5716: "0.5716", -3.25: "-3.25",
	} {
		if got := FormatNumber(in); got != want {
			t.Errorf("FormatNumber(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestBetterDirection(t *testing.T) {
	for m, want := range map[string]string{
		"fwdbwd_ms": "lower", "ms": "lower", "loss": "lower", "peak_mem_bytes": "lower", "tokens_per_s": "higher",
		"accuracy": "higher", "mfu": "higher", "grad_norm": "",
	} {
		if got := betterDirection(m); got != want {
			t.Errorf("betterDirection(%q) = %q, want %q", m, got, want)
		}
	}
}

func TestSupersede(t *testing.T) {
	rows := load(t, "testdata/baselines")
	rep, err := Pivot(rows, Options{Baseline: "gdn"})
	if err != nil {
		t.Fatal(err)
	}
	tb := rep.Tables[0]
	if c := findLine(t, tb, "sdpa").Cells[colIndex(t, tb, "2048")]; c.Status != StatusPartial || c.Total != 2 {
		t.Fatalf("without Supersede the timed-out first try shows: %+v", c)
	}
	kept, note := Supersede(rows)
	if len(kept) != len(rows)-1 || !strings.Contains(note, "1 superseded rows dropped") {
		t.Fatalf("one row superseded: kept %d of %d, note %q", len(kept), len(rows), note)
	}
	rep, err = Pivot(kept, Options{Baseline: "gdn"})
	if err != nil {
		t.Fatal(err)
	}
	tb = rep.Tables[0]
	if c := findLine(t, tb, "sdpa").Cells[colIndex(t, tb, "2048")]; c.Status != "ok" || c.Total != 1 {
		t.Fatalf("the later ok row wins: %+v", c)
	}
	if c := findLine(t, tb, "mdn").Cells[colIndex(t, tb, "4096")]; c.N != 3 {
		t.Fatalf("repeats are distinct points and stay: %+v", c)
	}
	// the same point on two machines is two results, not a re-run
	mixed := load(t, "testdata/mixed")
	if kept, note := Supersede(mixed); len(kept) != len(mixed) || note != "" {
		t.Fatalf("same points on two devices must all stay: %d of %d, %q", len(kept), len(mixed), note)
	}
}

// Rows shaped like the op benchmark's output: {"fwd": {"ms", "p20", "p80"}, "fwd_bwd": {...}} flattened.
func TestNestedTimingFields(t *testing.T) {
	dir := t.TempDir()
	body := ""
	for i, T := range []int{2048, 4096} {
		body += `{"op": "mdn", "T": ` + itoa(T) + `, "B": 2, "device": "X", "fwd": {"ms": ` + itoa(1+i) + `, "p20": 0.5, "p80": 2.5}, "fwd_bwd": {"ms": ` + itoa(3+i) + `, "p20": 2, "p80": 9}}` + "\n"
	}
	p := writeFile(t, dir, "r.jsonl", body)
	rows := load(t, p)
	rep, err := Pivot(rows, Options{Metric: "fwd_bwd.ms"})
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Tables[0].Lines[0].Cells[0]
	if *c.Value != 3 || c.Spread != "p20-p80" || *c.Lo != 2 || *c.Hi != 9 || rep.Unit != "ms" || rep.Better != "lower" {
		t.Fatalf("nested timing: %+v unit %q better %q", c, rep.Unit, rep.Better)
	}
	figs, err := BuildPlots(rows, PlotOptions{Kinds: []string{"throughput"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := figNames(figs); got != "throughput_fwd-tokens-per-s,throughput_fwd-bwd-tokens-per-s" {
		t.Fatalf("derived throughput per mode: %s", got)
	}
}

func itoa(i int) string { return FormatValue(float64(i)) }
