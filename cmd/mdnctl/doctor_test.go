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
	"time"

	"github.com/mdnctl/mdnctl/launcher"
)

// fakeDoctorRunner answers the doctor job without Python.
type fakeDoctorRunner struct {
	result string // the result event's data
	err    error
	opts   launcher.Options
	spec   launcher.Spec
}

func (f *fakeDoctorRunner) Run(ctx context.Context, opts launcher.Options, spec launcher.Spec) (*launcher.Outcome, error) {
	f.opts, f.spec = opts, spec
	if f.err != nil {
		return nil, f.err
	}
	return &launcher.Outcome{JobID: spec.ID, Result: json.RawMessage(f.result)}, nil
}

const doctorCPUReport = `{
 "python": {"executable": "/repo/.venv/bin/python", "version": "3.11.7", "implementation": "CPython", "prefix": "/repo/.venv", "venv": true},
 "mdn": {"version": "0.1.0", "path": "/repo/triton/mdn"},
 "packages": {
  "torch": {"importable": true, "version": "2.11.0+cu130", "path": "/x/torch", "error": null},
  "triton": {"importable": true, "version": "3.6.0", "path": "/x/triton", "error": null},
  "numpy": {"importable": true, "version": "2.3.5", "path": "/x/numpy", "error": null},
  "fla": {"importable": false, "version": null, "path": null, "error": "ModuleNotFoundError: No module named 'fla'"},
  "mamba_ssm": {"importable": false, "version": null, "path": null, "error": "ImportError: libcudart.so.12: cannot open shared object file"}
 },
 "pins": {"torch": {"want": "==2.11.*", "have": "2.11.0", "ok": true}, "triton": {"want": "==3.6.*", "have": "3.6.0", "ok": true}},
 "cuda": {"available": false, "torch_cuda": "13.0", "device_count": 0, "devices": [], "error": null},
 "triton_target": null, "triton_interpret": false,
 "backend": "torch", "backend_reason": "no CUDA device; TRITON_INTERPRET=1 would run the Triton kernels in the interpreter",
 "future_field": {"kept": true}
}`

func doctorGPUReport(t *testing.T) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(doctorCPUReport), &m); err != nil {
		t.Fatal(err)
	}
	m["cuda"] = map[string]any{"available": true, "torch_cuda": "13.0", "device_count": 1, "devices": []any{
		map[string]any{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2, "capability": "9.0", "multiprocessors": 132}}}
	m["triton_target"] = map[string]any{"backend": "cuda", "arch": "90"}
	m["backend"], m["backend_reason"] = "gpu", "Triton kernels compile for the CUDA device"
	pk := m["packages"].(map[string]any)
	pk["fla"] = map[string]any{"importable": true, "version": "0.4.1", "path": "/x/fla"}
	b, _ := json.Marshal(m)
	return string(b)
}

func doctorWithPackage(t *testing.T, report, name string, pkg map[string]any) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(report), &m); err != nil {
		t.Fatal(err)
	}
	m["packages"].(map[string]any)[name] = pkg
	b, _ := json.Marshal(m)
	return string(b)
}

func newTestDoctor(runner launcher.JobRunner, jsonOut, tty bool) (*doctorOptions, *bytes.Buffer) {
	var out bytes.Buffer
	g := &globalOptions{Stdout: &out, Stderr: &out, JSON: jsonOut, IsTTY: tty}
	return &doctorOptions{g: g, Timeout: time.Minute, runner: runner,
		findPython: func() (string, string, error) { return "/repo/.venv/bin/python", ".venv", nil }}, &out
}

func TestDoctorHealthyCPUPlainLines(t *testing.T) {
	fake := &fakeDoctorRunner{result: doctorCPUReport}
	o, out := newTestDoctor(fake, false, false)
	if err := o.run(context.Background()); err != nil {
		t.Fatalf("run: %v", err)
	}
	if fake.spec.Kind != "doctor" || fake.opts.Python != "/repo/.venv/bin/python" || fake.opts.Timeout != time.Minute {
		t.Errorf("launched %+v with %+v", fake.spec, fake.opts)
	}
	text := out.String()
	for _, want := range []string{
		"interpreter: /repo/.venv/bin/python (from .venv)\n",
		"python: CPython 3.11.7, venv /repo/.venv\n",
		"torch: 2.11.0+cu130 (pin ==2.11.* ok), built for CUDA 13.0\n",
		"triton: 3.6.0 (pin ==3.6.* ok)\n",
		"numpy: 2.3.5\n",
		"cuda: not available\n",
		"fla: not installed (optional; fla baselines unavailable)\n",
		"mamba_ssm: not installed (optional; mamba baselines unavailable): ImportError: libcudart.so.12",
		"kernels: torch fallback\n",
		"status: ok\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if strings.ContainsAny(text, "┌│") {
		t.Error("plain output must not draw a table")
	}
}

func TestDoctorGPUTable(t *testing.T) {
	o, out := newTestDoctor(&fakeDoctorRunner{result: doctorGPUReport(t)}, false, true)
	if err := o.run(context.Background()); err != nil {
		t.Fatalf("run: %v", err)
	}
	text := out.String()
	for _, want := range []string{"│", "NVIDIA H100 80GB HBM3, 79.2 GiB, compute capability 9.0, 132 SMs", "GPU (Triton) for cuda arch 90", "available, 1 device(s)", "0.4.1"} {
		if !strings.Contains(text, want) {
			t.Errorf("table lacks %q:\n%s", want, text)
		}
	}
}

func TestDoctorJSON(t *testing.T) {
	o, out := newTestDoctor(&fakeDoctorRunner{result: doctorGPUReport(t)}, true, true)
	if err := o.run(context.Background()); err != nil {
		t.Fatalf("run: %v", err)
	}
	var doc struct {
		Interpreter struct{ Path, Source string }
		OK          bool
		Problems    []string
		Warnings    []string
		Cuda        struct {
			Devices []struct{ Name, Capability string }
		}
		FutureField map[string]any `json:"future_field"`
	}
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, out.String())
	}
	if !doc.OK || doc.Interpreter.Source != ".venv" || len(doc.Cuda.Devices) != 1 || doc.Cuda.Devices[0].Capability != "9.0" {
		t.Errorf("doc = %+v", doc)
	}
	if doc.Problems == nil || doc.Warnings == nil {
		t.Error("problems and warnings must be [] rather than null")
	}
	if doc.FutureField["kept"] != true {
		t.Error("--json must pass the job's whole report through")
	}
}

func assertDoctorFails(t *testing.T, err error, wants ...string) {
	t.Helper()
	var ec *exitCodeError
	if !errors.As(err, &ec) || ec.code != 1 {
		t.Fatalf("err = %v, want exit code 1", err)
	}
	line := errorLine(err)
	if strings.Contains(line, "\n") {
		t.Errorf("error is not one line: %q", line)
	}
	for _, w := range wants {
		if !strings.Contains(line, w) {
			t.Errorf("error %q lacks %q", line, w)
		}
	}
}

func TestDoctorRequiredPackageMissing(t *testing.T) {
	report := doctorWithPackage(t, doctorCPUReport, "triton", map[string]any{"importable": false, "error": "ModuleNotFoundError: No module named 'triton'"})
	report = doctorWithPackage(t, report, "torch", map[string]any{"importable": false, "error": "ModuleNotFoundError: No module named 'torch'"})
	o, out := newTestDoctor(&fakeDoctorRunner{result: report}, false, false)
	err := o.run(context.Background())
	assertDoctorFails(t, err, "/repo/.venv/bin/python (from .venv) cannot import torch (ModuleNotFoundError", "triton (", "make setup")
	if !strings.Contains(out.String(), "torch: MISSING (required)") || !strings.Contains(out.String(), "status: 1 problem(s)") {
		t.Errorf("the report must still be printed:\n%s", out.String())
	}
}

func TestDoctorRequiredMissingJSON(t *testing.T) {
	report := doctorWithPackage(t, doctorCPUReport, "numpy", map[string]any{"importable": false, "error": "ImportError: broken"})
	o, out := newTestDoctor(&fakeDoctorRunner{result: report}, true, false)
	assertDoctorFails(t, o.run(context.Background()), "numpy (ImportError: broken)")
	var doc struct {
		OK       bool
		Problems []string
	}
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil || doc.OK || len(doc.Problems) != 1 {
		t.Errorf("json = %s (%v)", out.String(), err)
	}
}

func TestDoctorPinMismatchIsAWarning(t *testing.T) {
	var m map[string]any
	json.Unmarshal([]byte(doctorCPUReport), &m)
	m["pins"].(map[string]any)["torch"] = map[string]any{"want": "==2.11.*", "have": "2.10.0", "ok": false}
	b, _ := json.Marshal(m)
	o, out := newTestDoctor(&fakeDoctorRunner{result: string(b)}, false, false)
	if err := o.run(context.Background()); err != nil {
		t.Fatalf("a pin mismatch must not fail doctor: %v", err)
	}
	if !strings.Contains(out.String(), "warning: torch 2.10.0 is installed but the mdn package pins torch==2.11.*") {
		t.Errorf("no warning:\n%s", out.String())
	}
}

func TestDoctorNoInterpreter(t *testing.T) {
	o, out := newTestDoctor(&fakeDoctorRunner{}, true, false)
	o.findPython = func() (string, string, error) {
		return launcher.FindPython("", t.TempDir()) // no .venv; PATH emptied below
	}
	t.Setenv("MDN_PYTHON", "")
	t.Setenv("PATH", t.TempDir())
	assertDoctorFails(t, o.run(context.Background()), "no Python interpreter found", "make setup")
	if !strings.Contains(out.String(), `"ok": false`) {
		t.Errorf("--json must still say ok=false: %s", out.String())
	}
}

func TestDoctorRunnerCannotStart(t *testing.T) {
	crash := &launcher.ExitError{Job: "doctor", Code: 1, StderrTail: []string{
		"/repo/.venv/bin/python: Error while finding module specification for 'mdn.runner' (ModuleNotFoundError: No module named 'mdn')"}}
	o, _ := newTestDoctor(&fakeDoctorRunner{err: crash}, false, false)
	assertDoctorFails(t, o.run(context.Background()),
		"the mdn runner did not run with /repo/.venv/bin/python (from .venv)", "No module named 'mdn'", "make setup")
}

func TestDoctorTimeout(t *testing.T) {
	o, _ := newTestDoctor(&fakeDoctorRunner{err: &launcher.TimeoutError{Job: "doctor", After: time.Minute}}, false, false)
	assertDoctorFails(t, o.run(context.Background()), "did not finish within 1m0s", "--timeout")
}

func TestDoctorInterrupted(t *testing.T) {
	o, _ := newTestDoctor(&fakeDoctorRunner{err: context.Canceled}, false, false)
	if err := o.run(context.Background()); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled (exit 130 in execute)", err)
	}
}

// One real run on the CPU through the whole CLI: `mdnctl doctor --json` with the set-up interpreter.
func TestDoctorRealCPU(t *testing.T) {
	wd, _ := os.Getwd()
	root := launcher.FindRepoRoot(wd)
	py := os.Getenv("MDN_PYTHON")
	if py == "" && root != "" {
		py = filepath.Join(root, ".venv", "bin", "python")
	}
	if _, err := os.Stat(py); py == "" || err != nil {
		t.Skipf("no Python at %q (set MDN_PYTHON or run `make setup`): the real doctor run is not tested", py)
	}
	var stdout, stderr bytes.Buffer
	code := execute([]string{"doctor", "--json", "--python", py}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("mdnctl doctor exited %d: %s", code, stderr.String())
	}
	var doc struct {
		OK          bool
		Interpreter struct{ Path, Source string }
		Packages    map[string]struct{ Importable bool }
		Backend     string
	}
	if err := json.Unmarshal(stdout.Bytes(), &doc); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, stdout.String())
	}
	if !doc.OK || doc.Interpreter.Source != launcher.FromFlag || !doc.Packages["torch"].Importable || doc.Backend == "" {
		t.Errorf("doctor = %+v", doc)
	}
}
