package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/train"
)

// fakeEvalRunner records the eval job it was given and answers with a canned result or error.
type fakeEvalRunner struct {
	result string
	err    error
	spec   launcher.Spec
	calls  int
}

func (f *fakeEvalRunner) Run(ctx context.Context, opts launcher.Options, spec launcher.Spec) (*launcher.Outcome, error) {
	f.spec = spec
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	return &launcher.Outcome{JobID: spec.ID, Result: json.RawMessage(f.result)}, nil
}

const evalResultJSON = `{
 "checkpoint": "/runs/tiny/checkpoints/step_000030", "step": 30, "train_seq_len": 64,
 "data": {"source": "bytes", "corpus_seed": 1001237}, "held_out": true,
 "note": "generated text, corpus_seed 1001237 (training used 1234)", "n_params": 183768,
 "device": "cpu", "precision": "fp32", "elapsed_s": 3.2,
 "lengths": [
  {"seq_len": 64, "factor": 1, "loss": 1.5, "ppl": 4.4817, "tokens": 65536, "windows": 1024, "status": "ok",
   "segments": [{"from": 0, "to": 64, "loss": 1.5, "ppl": 4.4817}]},
  {"seq_len": 128, "factor": 2, "loss": 1.75, "ppl": 5.7546, "tokens": 65536, "windows": 512, "status": "ok",
   "segments": [{"from": 0, "to": 64, "loss": 1.5, "ppl": 4.4817}, {"from": 64, "to": 128, "loss": 2.0, "ppl": 7.389}]},
  {"seq_len": 256, "factor": 4, "status": "oom", "reason": "CUDA out of memory"}
 ],
 "loss": 1.5, "ppl": 4.4817, "loss_2x": 1.75, "ppl_2x": 5.7546
}`

func writeRun(t *testing.T, name, content string) string {
	t.Helper()
	dir := t.TempDir()
	if name != "" {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func newTestEval(runner launcher.JobRunner, jsonOut, tty bool) (*evalOptions, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	g := &globalOptions{Stdout: &out, Stderr: &errb, JSON: jsonOut, IsTTY: tty, Quiet: true}
	o := &evalOptions{g: g, runner: runner, Factors: []int{1, 2, 4}, Tokens: 65536, Device: "auto", Precision: "auto",
		findPython: func() (string, string, error) { return "/fake/python", "test", nil }}
	return o, &out, &errb
}

const runConfigJSON = `{"name": "tiny", "out_dir": "/runs/tiny",
 "model": {"arch": "mdn", "vocab_size": 256, "hidden_size": 64, "num_layers": 2},
 "train": {"steps": 30, "batch_size": 8, "seq_len": 64, "seed": 42},
 "data": {"source": "bytes", "corpus_bytes": 2000000}}`

func TestEvalResolvesParamsFromRunConfigJSON(t *testing.T) {
	dir := writeRun(t, "config.json", runConfigJSON)
	f := &fakeEvalRunner{result: evalResultJSON}
	o, out, _ := newTestEval(f, false, false)
	if err := o.run(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if f.spec.Kind != "eval" {
		t.Fatalf("job kind %q, want eval", f.spec.Kind)
	}
	p := f.spec.Params
	if p["seq_len"] != 64 || p["batch_size"] != 8 || p["eval_tokens"] != 65536 || p["checkpoint"] != "" {
		t.Errorf("params %v", p)
	}
	if p["run_dir"] != dir {
		t.Errorf("run_dir %v, want %s", p["run_dir"], dir)
	}
	if m := p["model"].(map[string]any); m["arch"] != "mdn" {
		t.Errorf("model %v", m)
	}
	if d := p["data"].(map[string]any); d["source"] != "bytes" {
		t.Errorf("data %v", d)
	}
	if fs := p["factors"].([]any); len(fs) != 3 || fs[2] != 4 {
		t.Errorf("factors %v", fs)
	}
	text := out.String()
	for _, want := range []string{"step 30", "held out: generated text", "64\t1\t1.5000\t4.482", "[64,128) 2.0000", "oom: CUDA out of memory"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
}

func TestEvalReadsTOMLConfigAndFlagsOverride(t *testing.T) {
	dir := writeRun(t, "config.toml", `
[model]
arch = "gdn"
vocab_size = 256

[train]
seq_len = 128
batch_size = 4

[data]
source = "shards"
path = "/data/train.bin"
`)
	f := &fakeEvalRunner{result: evalResultJSON}
	o, _, _ := newTestEval(f, false, false)
	o.SeqLen, o.BatchSize, o.Factors, o.ValPath, o.Checkpoint = 256, 2, []int{1, 8}, "val.bin", "ck"
	if err := o.run(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	p := f.spec.Params
	if p["seq_len"] != 256 || p["batch_size"] != 2 {
		t.Errorf("flags did not override: %v", p)
	}
	if fs := p["factors"].([]any); len(fs) != 2 || fs[1] != 8 {
		t.Errorf("factors %v", fs)
	}
	if !filepath.IsAbs(p["val_path"].(string)) || !filepath.IsAbs(p["checkpoint"].(string)) {
		t.Errorf("paths must be absolute for the job: %v %v", p["val_path"], p["checkpoint"])
	}
	if d := p["data"].(map[string]any); d["source"] != "shards" {
		t.Errorf("data %v", d)
	}
}

func TestEvalJSONPassesResultThrough(t *testing.T) {
	dir := writeRun(t, "config.json", runConfigJSON)
	o, out, _ := newTestEval(&fakeEvalRunner{result: evalResultJSON}, true, false)
	if err := o.run(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	if m["ppl_2x"] != 5.7546 || m["run"] != dir || len(m["lengths"].([]any)) != 3 {
		t.Errorf("json %v", m)
	}
}

func TestEvalTableOnTTY(t *testing.T) {
	dir := writeRun(t, "config.json", runConfigJSON)
	o, out, _ := newTestEval(&fakeEvalRunner{result: evalResultJSON}, false, true)
	if err := o.run(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "│") || !strings.Contains(out.String(), "loss by position") {
		t.Errorf("no table:\n%s", out.String())
	}
}

func TestEvalUserErrors(t *testing.T) {
	cases := []struct {
		name, file, content string
		mutate              func(o *evalOptions)
		want                string
	}{
		{"no config", "", "", nil, "has no config.toml, job.json, config.json"},
		{"bad json", "config.json", "{", nil, "config.json"},
		{"bad toml", "config.toml", "[model]\nx = \n", nil, "config.toml:2"},
		{"no model", "config.json", `{"train": {"seq_len": 8}}`, nil, "model: missing"},
		{"no seq_len", "config.json", `{"model": {}, "train": {}}`, nil, "train.seq_len"},
		{"bad factor", "config.json", runConfigJSON, func(o *evalOptions) { o.Factors = []int{0} }, "--factors 0"},
		{"bad precision", "config.json", runConfigJSON, func(o *evalOptions) { o.Precision = "fp8" }, "--precision"},
		{"bad device", "config.json", runConfigJSON, func(o *evalOptions) { o.Device = "tpu" }, "--device"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeRun(t, c.file, c.content)
			f := &fakeEvalRunner{result: evalResultJSON}
			o, _, _ := newTestEval(f, false, false)
			if c.mutate != nil {
				c.mutate(o)
			}
			err := o.run(context.Background(), dir)
			var ue *userError
			if !errors.As(err, &ue) {
				t.Fatalf("want a user error, got %v", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q lacks %q", err, c.want)
			}
			if f.calls != 0 {
				t.Errorf("the job ran despite the bad input")
			}
		})
	}
	o, _, _ := newTestEval(&fakeEvalRunner{}, false, false)
	if err := o.run(context.Background(), filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "run directory") {
		t.Errorf("missing dir: %v", err)
	}
}

func TestEvalJobErrors(t *testing.T) {
	dir := writeRun(t, "config.json", runConfigJSON)
	o, _, _ := newTestEval(&fakeEvalRunner{err: &launcher.JobError{Job: "eval", Kind: "user", Message: "run_dir: no checkpoint"}}, false, false)
	err := o.run(context.Background(), dir)
	var ue *userError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "no checkpoint") {
		t.Errorf("user job error: %v", err)
	}
	o, _, _ = newTestEval(&fakeEvalRunner{err: &launcher.ExitError{Job: "eval", Code: 1}}, false, false)
	err = o.run(context.Background(), dir)
	if err == nil || errors.As(err, &ue) {
		t.Errorf("a crash must not read as a user error: %v", err)
	}
}

// The config.toml that `mdnctl train` writes (train.Config.WriteTOML) is read back through the train package:
// every key resolved, "none" as null, as the train job saw it.
func TestEvalReadsTheTrainWrittenConfig(t *testing.T) {
	c, err := train.Load(filepath.Join("..", "..", "configs", "mdn-tiny.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var buf bytes.Buffer
	if err := c.WriteTOML(&buf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, train.ConfigFile), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	f := &fakeEvalRunner{result: evalResultJSON}
	o, _, _ := newTestEval(f, false, false)
	if err := o.run(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	p := f.spec.Params
	if p["seq_len"] != int(c.Int("train.seq_len")) || p["batch_size"] != int(c.Int("train.batch_size")) {
		t.Errorf("seq_len/batch_size %v %v", p["seq_len"], p["batch_size"])
	}
	m := p["model"].(map[string]any)
	if m["arch"] != "mdn" || m["hidden_size"] != c.Int("model.hidden_size") {
		t.Errorf("model %v", m)
	}
	if v, ok := m["intermediate_size"]; !ok || v != nil {
		t.Errorf(`model.intermediate_size = %v: "none" must reach the job as null`, v)
	}
	if d := p["data"].(map[string]any); d["source"] != "bytes" {
		t.Errorf("data %v", d)
	}
}

func TestEvalReadsJobSpec(t *testing.T) {
	spec := `{"v": 1, "id": "train", "kind": "train", "params": ` + runConfigJSON + `}`
	dir := writeRun(t, train.SpecFile, spec)
	f := &fakeEvalRunner{result: evalResultJSON}
	o, _, _ := newTestEval(f, false, false)
	if err := o.run(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if f.spec.Params["seq_len"] != 64 {
		t.Errorf("params %v", f.spec.Params)
	}
	bad := writeRun(t, train.SpecFile, `{"v": 1, "id": "x", "kind": "bench", "params": {}}`)
	if err := o.run(context.Background(), bad); err == nil || !strings.Contains(err.Error(), `job kind "bench", want train`) {
		t.Errorf("bench spec: %v", err)
	}
}
