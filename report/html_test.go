package report

import (
	"bytes"
	"encoding/base64"
	"image/png"
	"regexp"
	"strings"
	"testing"
)

// samplePage builds the page the HTML tests use: the baselines table, a throughput and a chunk figure.
func samplePage(t *testing.T) *Page {
	t.Helper()
	ds, err := Load([]string{"testdata/baselines", "testdata/chunks", "testdata/bad/truncated_last"})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := ApplyFilters(ds.Rows, []Filter{{Key: "op", Values: []string{"gdn", "mdn", "sdpa", "kda", "mamba2"}}})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Pivot(rows, Options{Rows: []string{"op"}, Cols: []string{"T"}, Metric: "fwdbwd_ms", Baseline: "gdn"})
	if err != nil {
		t.Fatal(err)
	}
	figs, err := BuildPlots(rows, PlotOptions{Kinds: []string{"throughput", "chunk"}})
	if err != nil {
		t.Fatal(err)
	}
	return &Page{
		Title: "test <report>", Command: "mdnctl report testdata/baselines --baseline gdn", Version: "test",
		Inputs: ds.Files, Meta: RunMetadata(rows), Warnings: ds.Warnings, Report: rep, Figures: figs,
	}
}

var imgRE = regexp.MustCompile(`<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"`)

func TestHTMLPage(t *testing.T) {
	pg := samplePage(t)
	var buf bytes.Buffer
	if err := WriteHTML(&buf, pg); err != nil {
		t.Fatal(err)
	}
	html := buf.String()
	for _, s := range []string{
		"<title>test &lt;report&gt;</title>",      // escaped
		"NVIDIA H100 80GB HBM3 (",                 // the card in the metadata
		"2.11.0&#43;cu128",                        // versions
		"mdnctl report testdata/baselines",        // the command
		"gdn (baseline)",                          // baseline row
		`class="ratio good"`, `class="ratio bad"`, // coloured ratios
		"✗ failed", "– unavailable", // marks
		"incomplete last line",     // the loader's warning
		"cells would mix variants", // the split note
	} {
		if !strings.Contains(html, s) {
			t.Errorf("page lacks %q", s)
		}
	}
	if strings.Contains(html, "http://") || strings.Contains(html, "https://") || strings.Contains(html, "<link") {
		t.Error("the page must not fetch anything")
	}
	imgs := imgRE.FindAllStringSubmatch(html, -1)
	if len(imgs) != len(pg.Figures) || len(imgs) < 2 {
		t.Fatalf("want %d embedded images, got %d", len(pg.Figures), len(imgs))
	}
	for _, m := range imgs {
		b, err := base64.StdEncoding.DecodeString(m[1])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(bytes.NewReader(b)); err != nil {
			t.Fatalf("embedded image is not a PNG: %v", err)
		}
	}
}
