package report

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadTruncatedLastLineIsAWarning(t *testing.T) {
	ds, err := Load([]string{"testdata/bad/truncated_last"})
	if err != nil {
		t.Fatalf("a truncated last line must not be fatal: %v", err)
	}
	if len(ds.Rows) != 2 {
		t.Fatalf("want the 2 complete rows, got %d", len(ds.Rows))
	}
	if len(ds.Warnings) != 1 || !strings.Contains(ds.Warnings[0], "results.jsonl:3:") || !strings.Contains(ds.Warnings[0], "incomplete last line") {
		t.Fatalf("want one warning naming file:3, got %q", ds.Warnings)
	}
}

func TestLoadTruncatedMiddleLineIsAnErrorWithFileLine(t *testing.T) {
	_, err := Load([]string{"testdata/bad/truncated_mid.jsonl"})
	if err == nil {
		t.Fatal("a broken line in the middle of a file must be an error")
	}
	if !strings.Contains(err.Error(), "testdata/bad/truncated_mid.jsonl:2:") {
		t.Fatalf("error must name file:line, got %v", err)
	}
}

func TestLoadNotAnObject(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "x.jsonl", "{\"a\": 1}\n[1, 2]\n{\"a\": 2}\n")
	_, err := Load([]string{p})
	if err == nil || !strings.Contains(err.Error(), "x.jsonl:2:") {
		t.Fatalf("want file:2 error for an array line, got %v", err)
	}
}

func TestLoadDirectoryGlobAndMissing(t *testing.T) {
	ds, err := Load([]string{"testdata/mixed"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Files) != 2 || len(ds.Rows) != 8 {
		t.Fatalf("want 2 files / 8 rows under testdata/mixed, got %+v / %d", ds.Files, len(ds.Rows))
	}
	if ds.Rows[0][FieldRun] != "h100" {
		t.Fatalf("_run should be the directory name, got %v", ds.Rows[0][FieldRun])
	}
	ds, err = Load([]string{"testdata/mixed/*/results.jsonl", "testdata/mixed/h100/results.jsonl"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Rows) != 8 {
		t.Fatalf("a file named twice must be read once: got %d rows", len(ds.Rows))
	}
	if _, err := Load([]string{"testdata/nope/*.jsonl"}); err == nil || !strings.Contains(err.Error(), "no file matches") {
		t.Fatalf("want no-match error, got %v", err)
	}
	if _, err := Load([]string{"testdata/does-not-exist"}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("want missing-path error, got %v", err)
	}
	empty := t.TempDir()
	if _, err := Load([]string{empty}); err == nil || !strings.Contains(err.Error(), "no result files") {
		t.Fatalf("want empty-directory error, got %v", err)
	}
	if _, err := Load(nil); err == nil {
		t.Fatal("no input must be an error")
	}
}

func TestLoadFlattensEventsAndNesting(t *testing.T) {
	ds, err := Load([]string{"testdata/train/mdn-tiny/metrics.jsonl"})
	if err != nil {
		t.Fatal(err)
	}
	// the start event carries no data and is dropped; metric events become their data
	if len(ds.Rows) != 60 {
		t.Fatalf("want 60 metric rows, got %d", len(ds.Rows))
	}
	r := ds.Rows[0]
	if v, _ := r.Num("step"); v != 1 {
		t.Fatalf("step of the first row: %v", r["step"])
	}
	if s, _ := r.Str("torch"); s != "2.11.0+cu128" {
		t.Fatalf("suffix lookup of versions.torch: %q (row %v)", s, r)
	}
	if r["job"] != "train-1" {
		t.Fatalf("job kept: %v", r["job"])
	}
}

func TestLoadCSVAndJSON(t *testing.T) {
	dir := t.TempDir()
	csvp := writeFile(t, dir, "s.csv", "alpha,beta,schur_stable,note\n0.9,0.5,true,\n0.9,1.0,false,x\n0.9,")
	ds, err := Load([]string{csvp})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Rows) != 2 || len(ds.Warnings) != 1 {
		t.Fatalf("CSV: want 2 rows and a warning for the torn last record, got %d rows, %q", len(ds.Rows), ds.Warnings)
	}
	if ds.Rows[0]["schur_stable"] != true || ds.Rows[0]["beta"] != 0.5 {
		t.Fatalf("CSV values typed: %v", ds.Rows[0])
	}
	if _, ok := ds.Rows[0]["note"]; ok {
		t.Fatal("an empty CSV field is a missing field")
	}
	bad := writeFile(t, dir, "b.csv", "a,b\n1,2\n3\n4,5\n")
	if _, err := Load([]string{bad}); err == nil || !strings.Contains(err.Error(), "b.csv:3:") {
		t.Fatalf("ragged CSV record mid-file: want b.csv:3 error, got %v", err)
	}
	js := writeFile(t, dir, "grid.json", `{"rho": "alpha", "points": [{"alpha": 0.5}, {"alpha": 0.7}]}`)
	ds, err = Load([]string{js})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Rows) != 2 || ds.Rows[1]["rho"] != "alpha" || ds.Rows[1]["alpha"] != 0.7 {
		t.Fatalf("JSON object with one array of rows: %v", ds.Rows)
	}
	badjs := writeFile(t, dir, "bad.json", "[\n{\"a\": 1},\n{\"a\": }\n]")
	if _, err := Load([]string{badjs}); err == nil || !strings.Contains(err.Error(), "bad.json:3:") {
		t.Fatalf("want bad.json:3, got %v", err)
	}
}

func TestFilters(t *testing.T) {
	ds, err := Load([]string{"testdata/baselines"})
	if err != nil {
		t.Fatal(err)
	}
	parse := func(s string) Filter {
		f, err := ParseFilter(s)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	rows, err := ApplyFilters(ds.Rows, []Filter{parse("op=mdn,gdn"), parse("T=4096.0")})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 4 { // gdn + 3 mdn repeats
		t.Fatalf("op in (mdn, gdn) and T=4096: want 4 rows, got %d", len(rows))
	}
	rows, err = ApplyFilters(ds.Rows, []Filter{parse("status!=ok")})
	if err != nil || len(rows) != 6 {
		t.Fatalf("status!=ok: want 6 rows, got %d (%v)", len(rows), err)
	}
	_, err = ApplyFilters(ds.Rows, []Filter{parse("op=rwkv")})
	if err == nil || !strings.Contains(err.Error(), "empty selection") || !strings.Contains(err.Error(), "gdn, kda, mamba2, mdn, sdpa") {
		t.Fatalf("empty selection error must list the values: %v", err)
	}
	_, err = ApplyFilters(ds.Rows, []Filter{parse("gpu_name=x")})
	if err == nil || !strings.Contains(err.Error(), `no row has field "gpu_name"`) {
		t.Fatalf("unknown filter field: %v", err)
	}
	if _, err := ParseFilter("op"); err == nil {
		t.Fatal("a filter without = must be refused")
	}
}
