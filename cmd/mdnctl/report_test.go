package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fixtures = "../../report/testdata"

func runMdnctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := execute(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestReportExampleCommand(t *testing.T) {
	code, out, errs := runMdnctl(t, "report", fixtures+"/baselines", "--rows", "op", "--cols", "T", "--metric", "fwdbwd_ms", "--baseline", "gdn")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, s := range []string{"gdn (baseline)", "T=1024", "T=8192", "✗ failed", "– unavailable", "1.20×", "device NVIDIA H100 80GB HBM3",
		"note: 1 superseded rows dropped"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Error("no colours when stdout is not a terminal")
	}
	_, out, _ = runMdnctl(t, "report", fixtures+"/baselines", "--baseline", "gdn", "--all-rows")
	if !strings.Contains(out, "(1/2 ok)") || strings.Contains(out, "superseded") {
		t.Errorf("--all-rows keeps the timed-out first try:\n%s", out)
	}
}

func TestReportFormats(t *testing.T) {
	base := []string{"report", fixtures + "/baselines", "--baseline", "gdn"}
	_, md, _ := runMdnctl(t, append(base, "--format", "markdown")...)
	if !strings.Contains(md, "|:---") || !strings.Contains(md, "#### device") {
		t.Errorf("markdown:\n%s", md)
	}
	_, csv, _ := runMdnctl(t, append(base, "--format", "csv")...)
	if !strings.HasPrefix(csv, "device,versions.mdn,versions.torch,versions.triton,op,T,metric,value,lo,hi,spread,n,total,status,ratio,baseline\n") {
		t.Errorf("csv header:\n%s", csv)
	}
	for _, args := range [][]string{append(base, "--format", "json"), append(base, "--json")} {
		code, js, errs := runMdnctl(t, args...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		var v struct {
			Metric string `json:"metric"`
			Tables []struct {
				Rows []struct {
					Key []string `json:"key"`
				} `json:"rows"`
			} `json:"tables"`
		}
		if err := json.Unmarshal([]byte(js), &v); err != nil {
			t.Fatalf("%v: not JSON: %v", args, err)
		}
		if v.Metric != "fwdbwd_ms" || len(v.Tables) != 1 || len(v.Tables[0].Rows) != 5 {
			t.Errorf("json: %+v", v)
		}
	}
	code, _, errs := runMdnctl(t, append(base, "--format", "xml")...)
	if code == 0 || !strings.Contains(errs, `unknown --format "xml"`) {
		t.Errorf("bad format: %d %s", code, errs)
	}
}

func TestReportBadInputs(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{fixtures + "/baselines", "--metric", "fwd_bwd_ms"}, `unknown metric "fwd_bwd_ms"; metrics in the selected rows: B, H, K, T, V, chunk_size, fwd_ms`},
		{[]string{fixtures + "/bad/truncated_mid.jsonl"}, "truncated_mid.jsonl:2: not a JSON object"},
		{[]string{fixtures + "/baselines", "--filter", "op=rwkv"}, "empty selection: no row matches --filter op=rwkv (op has: gdn, kda, mamba2, mdn, sdpa)"},
		{[]string{fixtures + "/baselines", "--filter", "op"}, `bad --filter "op"`},
		{[]string{fixtures + "/baselines", "--baseline", "rwkv"}, "--baseline rwkv matches no value"},
		{[]string{fixtures + "/nothing-here"}, "nothing-here: no such file or directory"},
		{[]string{fixtures + "/baselines", "--plot", t.TempDir(), "--plots", "mqar"}, "plot mqar: no row has an accuracy field"},
	}
	for _, c := range cases {
		code, out, errs := runMdnctl(t, append([]string{"report"}, c.args...)...)
		if code != 1 || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 and %q", c.args, code, errs, c.want)
		}
		if strings.Count(strings.TrimSpace(errs), "\n") > 0 || strings.Contains(errs, "goroutine") {
			t.Errorf("%v: a user error is one line: %q", c.args, errs)
		}
		if out != "" {
			t.Errorf("%v: nothing on stdout on error, got %q", c.args, out)
		}
	}
	// a torn last line (a file being appended to) is a warning, and the report still comes out
	code, out, errs := runMdnctl(t, "report", fixtures+"/bad/truncated_last")
	if code != 0 || !strings.Contains(errs, "warning: ") || !strings.Contains(errs, "results.jsonl:3: skipped an incomplete last line") || !strings.Contains(out, "gdn") {
		t.Errorf("truncated last line: exit %d, stderr %q, stdout %q", code, errs, out)
	}
}

func TestReportPlotsAndHTML(t *testing.T) {
	dir := t.TempDir()
	plots, html := filepath.Join(dir, "plots"), filepath.Join(dir, "html")
	code, _, errs := runMdnctl(t, "report", fixtures+"/baselines", fixtures+"/chunks", "--filter", "op=gdn,mdn,sdpa",
		"--baseline", "gdn", "--plot", plots, "--html", html, "--title", "fixture report")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, f := range []string{"throughput_tokens-per-s.png", "throughput_tokens-per-s.svg", "chunk_speedup_op-mdn_T-4096.png", "chunk_speedup_op-mdn_T-4096.svg"} {
		if st, err := os.Stat(filepath.Join(plots, f)); err != nil || st.Size() == 0 {
			t.Errorf("plot %s: %v", f, err)
		}
	}
	page, err := os.ReadFile(filepath.Join(html, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"<title>fixture report</title>", "mdnctl report " + fixtures + "/baselines", "--baseline=gdn", "--filter=op=gdn,mdn,sdpa", "data:image/png;base64,"} {
		if !strings.Contains(string(page), s) {
			t.Errorf("page lacks %q", s)
		}
	}
	if !strings.Contains(errs, "wrote "+filepath.Join(html, "index.html")+" (1 tables, 2 plots)") {
		t.Errorf("stderr: %q", errs)
	}
	// plots only: the stability grid has no default table metric, and that is not an error with --plot
	code, out, errs := runMdnctl(t, "report", fixtures+"/stability", "--plot", plots, "--html", html)
	if code != 0 || out != "" || !strings.Contains(errs, "stability_beta-eta_mu-0.5.png") {
		t.Errorf("stability plots: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}
