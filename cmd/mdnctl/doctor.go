package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/olekukonko/tablewriter"
	"github.com/olekukonko/tablewriter/renderer"
	"github.com/olekukonko/tablewriter/tw"
	"github.com/spf13/cobra"

	"github.com/mdnctl/mdnctl/launcher"
)

func init() { register(newDoctorCmd) }

// doctorOptions: `mdnctl doctor`. The Python side is the `doctor` job (triton/mdn/runner/jobs/doctor.py);
// this command decides what is required and prints the report.
type doctorOptions struct {
	g          *globalOptions
	Timeout    time.Duration
	runner     launcher.JobRunner             // the real launcher; a fake in tests
	findPython func() (string, string, error) // g.PythonPath; a fake in tests
}

// requiredPackages must import in the runner's interpreter; anything else is optional (baselines).
var requiredPackages = []string{"torch", "triton", "numpy"}

const fixHint = "run `make setup`, or set MDN_PYTHON to an interpreter with the mdn package installed"

func newDoctorCmd(g *globalOptions) *cobra.Command {
	o := &doctorOptions{g: g, runner: launcher.OneShot{}, findPython: g.PythonPath}
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the Python side: interpreter, torch, triton, CUDA devices, baselines, kernel backend",
		Long: `doctor starts the Python runner with the interpreter mdnctl would use (--python, $MDN_PYTHON,
.venv/bin/python, then python3 on PATH) and reports: where the interpreter came from, the Python, torch,
triton and numpy versions (and whether they match the pins of the mdn package), CUDA and each device (name,
memory, compute capability), whether the optional baselines flash-linear-attention (fla) and mamba_ssm
import, and where the Triton kernels will run: on the GPU, in the Triton interpreter (TRITON_INTERPRET=1), or
as the torch fallback.

It exits non-zero with a one-line fix when something required is missing (no interpreter, the mdn package,
torch, triton or numpy not importable). Output is a table on a terminal, plain "key: value" lines otherwise,
and JSON with --json.`,
		Example: `  mdnctl doctor
  mdnctl doctor --json
  TRITON_INTERPRET=1 mdnctl doctor     # what the CPU tests see`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd.Context()) },
	}
	cmd.Flags().DurationVar(&o.Timeout, "timeout", 5*time.Minute, "give up on the Python side after this long (the first torch import can be slow)")
	return cmd
}

// doctorReport mirrors the doctor job's result (docs/protocol.md, job kind doctor) for rendering; the JSON
// output passes the job's result through whole, with the interpreter and the verdict added.
type doctorReport struct {
	Python struct {
		Executable     string `json:"executable"`
		Version        string `json:"version"`
		Implementation string `json:"implementation"`
		Prefix         string `json:"prefix"`
		Venv           bool   `json:"venv"`
	} `json:"python"`
	MDN struct {
		Version string `json:"version"`
		Path    string `json:"path"`
	} `json:"mdn"`
	Packages map[string]doctorPackage `json:"packages"`
	Pins     map[string]struct {
		Want string `json:"want"`
		Have string `json:"have"`
		OK   bool   `json:"ok"`
	} `json:"pins"`
	CUDA struct {
		Available   bool           `json:"available"`
		TorchCUDA   string         `json:"torch_cuda"`
		DeviceCount int            `json:"device_count"`
		Devices     []doctorDevice `json:"devices"`
		Error       string         `json:"error"`
	} `json:"cuda"`
	TritonTarget *struct {
		Backend string `json:"backend"`
		Arch    string `json:"arch"`
	} `json:"triton_target"`
	TritonInterpret bool   `json:"triton_interpret"`
	Backend         string `json:"backend"`
	BackendReason   string `json:"backend_reason"`
}

type doctorPackage struct {
	Importable bool   `json:"importable"`
	Version    string `json:"version"`
	Path       string `json:"path"`
	Error      string `json:"error"`
}

type doctorDevice struct {
	Index           int     `json:"index"`
	Name            string  `json:"name"`
	MemoryGiB       float64 `json:"memory_gib"`
	Capability      string  `json:"capability"`
	Multiprocessors int     `json:"multiprocessors"`
}

// doctorVerdict is what the command adds to the job's result.
type doctorVerdict struct {
	Interpreter struct {
		Path   string `json:"path"`
		Source string `json:"source"`
	} `json:"interpreter"`
	OK       bool     `json:"ok"`
	Problems []string `json:"problems"` // required things missing: exit 1
	Warnings []string `json:"warnings"` // worth fixing, not fatal
}

func (o *doctorOptions) run(ctx context.Context) error {
	var v doctorVerdict
	v.Problems, v.Warnings = []string{}, []string{}
	py, src, err := o.findPython()
	v.Interpreter.Path, v.Interpreter.Source = py, src
	if err != nil {
		return o.fail(v, nil, fmt.Sprintf("%v", err))
	}
	out, err := o.runner.Run(ctx, launcher.Options{Python: py, Timeout: o.Timeout}, launcher.Spec{ID: "doctor", Kind: "doctor", Params: map[string]any{}})
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return err
		}
		return o.fail(v, nil, runnerProblem(py, src, o.Timeout, err))
	}
	var raw map[string]any
	var rep doctorReport
	if err := out.DecodeResult(&raw); err != nil {
		return o.fail(v, nil, fmt.Sprintf("doctor: unreadable report from the runner: %v", err))
	}
	if err := out.DecodeResult(&rep); err != nil {
		return o.fail(v, raw, fmt.Sprintf("doctor: unexpected report from the runner: %v", err))
	}
	v.Problems, v.Warnings = judge(&rep, py, src)
	v.OK = len(v.Problems) == 0
	if err := o.print(v, raw, &rep); err != nil {
		return err
	}
	if !v.OK {
		return &exitCodeError{code: 1, err: userErrorf("%s", strings.Join(v.Problems, "; "))}
	}
	return nil
}

// runnerProblem turns a launcher failure into one actionable line.
func runnerProblem(py, src string, timeout time.Duration, err error) string {
	var te *launcher.TimeoutError
	var je *launcher.JobError
	switch {
	case errors.As(err, &te):
		return fmt.Sprintf("the doctor job did not finish within %s with %s (from %s); try --timeout, or check the GPU driver (nvidia-smi)", timeout, py, src)
	case errors.As(err, &je):
		return fmt.Sprintf("the doctor job failed with %s (from %s): %s: %s", py, src, je.Kind, je.Message)
	}
	return fmt.Sprintf("the mdn runner did not run with %s (from %s): %v; %s", py, src, err, fixHint)
}

// judge decides what is required (problems: exit 1) and what is only worth a warning.
func judge(rep *doctorReport, py, src string) (problems, warnings []string) {
	problems, warnings = []string{}, []string{}
	var missing []string
	for _, name := range requiredPackages {
		p, ok := rep.Packages[name]
		if !ok || !p.Importable {
			why := "not reported"
			if ok && p.Error != "" {
				why = p.Error
			}
			missing = append(missing, fmt.Sprintf("%s (%s)", name, why))
		}
	}
	if len(missing) > 0 {
		problems = append(problems, fmt.Sprintf("%s (from %s) cannot import %s: %s", py, src, strings.Join(missing, ", "), fixHint))
	}
	dists := make([]string, 0, len(rep.Pins))
	for d := range rep.Pins {
		dists = append(dists, d)
	}
	sort.Strings(dists)
	for _, d := range dists {
		if pin := rep.Pins[d]; !pin.OK && pin.Have != "" {
			warnings = append(warnings, fmt.Sprintf("%s %s is installed but the mdn package pins %s%s (CPU and GPU results may differ): run `make setup`", d, pin.Have, d, pin.Want))
		}
	}
	if rep.CUDA.Error != "" {
		warnings = append(warnings, "CUDA: "+rep.CUDA.Error)
	}
	if rep.TritonInterpret && rep.CUDA.Available {
		warnings = append(warnings, "TRITON_INTERPRET=1 is set on a machine with a GPU: kernels run in the slow interpreter; unset it to use the GPU")
	}
	return problems, warnings
}

// fail reports a problem found before (or instead of) a full report.
func (o *doctorOptions) fail(v doctorVerdict, raw map[string]any, problem string) error {
	v.OK = false
	v.Problems = append(v.Problems, problem)
	if o.g.JSON {
		if err := writeDoctorJSON(o.g.Stdout, v, raw); err != nil {
			return err
		}
	}
	return &exitCodeError{code: 1, err: userErrorf("%s", problem)}
}

func writeDoctorJSON(w io.Writer, v doctorVerdict, raw map[string]any) error {
	doc := map[string]any{}
	for k, x := range raw {
		doc[k] = x
	}
	doc["interpreter"] = v.Interpreter
	doc["ok"] = v.OK
	doc["problems"] = v.Problems
	doc["warnings"] = v.Warnings
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

func (o *doctorOptions) print(v doctorVerdict, raw map[string]any, rep *doctorReport) error {
	if o.g.JSON {
		return writeDoctorJSON(o.g.Stdout, v, raw)
	}
	rows := doctorRows(v, rep)
	if o.g.IsTTY {
		t := tablewriter.NewTable(o.g.Stdout,
			tablewriter.WithRenderer(renderer.NewBlueprint(tw.Rendition{Symbols: tw.NewSymbols(tw.StyleLight)})),
			tablewriter.WithHeaderAutoFormat(tw.Off),
			tablewriter.WithRowAutoWrap(tw.WrapNone),
		)
		t.Header([]string{"check", "result"})
		for _, r := range rows {
			if err := t.Append([]string{r[0], r[1]}); err != nil {
				return err
			}
		}
		return t.Render()
	}
	for _, r := range rows {
		if _, err := fmt.Fprintf(o.g.Stdout, "%s: %s\n", r[0], r[1]); err != nil {
			return err
		}
	}
	return nil
}

func doctorRows(v doctorVerdict, rep *doctorReport) [][2]string {
	var rows [][2]string
	add := func(k, val string) { rows = append(rows, [2]string{k, val}) }
	add("interpreter", fmt.Sprintf("%s (from %s)", v.Interpreter.Path, v.Interpreter.Source))
	pyDesc := fmt.Sprintf("%s %s", rep.Python.Implementation, rep.Python.Version)
	if rep.Python.Venv {
		pyDesc += ", venv " + rep.Python.Prefix
	}
	add("python", pyDesc)
	add("mdn", fmt.Sprintf("%s at %s", rep.MDN.Version, rep.MDN.Path))
	for _, name := range []string{"torch", "triton", "numpy"} {
		p := rep.Packages[name]
		val := packageDesc(p, "MISSING (required)")
		if pin, ok := rep.Pins[name]; ok && p.Importable {
			if pin.OK {
				val += " (pin " + pin.Want + " ok)"
			} else {
				val += " (pin " + pin.Want + " NOT met)"
			}
		}
		if name == "torch" && p.Importable && rep.CUDA.TorchCUDA != "" {
			val += ", built for CUDA " + rep.CUDA.TorchCUDA
		}
		add(name, val)
	}
	switch {
	case rep.CUDA.Available:
		add("cuda", fmt.Sprintf("available, %d device(s)", rep.CUDA.DeviceCount))
	case rep.CUDA.Error != "":
		add("cuda", "not available: "+rep.CUDA.Error)
	default:
		add("cuda", "not available")
	}
	for _, d := range rep.CUDA.Devices {
		add(fmt.Sprintf("gpu %d", d.Index), fmt.Sprintf("%s, %.1f GiB, compute capability %s, %d SMs", d.Name, d.MemoryGiB, d.Capability, d.Multiprocessors))
	}
	add("fla", packageDesc(rep.Packages["fla"], "not installed (optional; fla baselines unavailable)"))
	add("mamba_ssm", packageDesc(rep.Packages["mamba_ssm"], "not installed (optional; mamba baselines unavailable)"))
	kernels := map[string]string{"gpu": "GPU (Triton)", "interpreter": "Triton interpreter (CPU)", "torch": "torch fallback", "none": "none"}[rep.Backend]
	if kernels == "" {
		kernels = rep.Backend
	}
	if rep.Backend == "gpu" && rep.TritonTarget != nil {
		kernels += fmt.Sprintf(" for %s arch %s", rep.TritonTarget.Backend, rep.TritonTarget.Arch)
	}
	add("kernels", kernels)
	if rep.BackendReason != "" {
		add("why", rep.BackendReason)
	}
	for _, w := range v.Warnings {
		add("warning", w)
	}
	if v.OK {
		add("status", "ok")
	} else {
		add("status", fmt.Sprintf("%d problem(s); see below", len(v.Problems)))
	}
	return rows
}

func packageDesc(p doctorPackage, missing string) string {
	if !p.Importable {
		// "No module named x" only says it is not installed; anything else (a broken install) is worth showing.
		if p.Error != "" && !strings.HasPrefix(p.Error, "ModuleNotFoundError: No module named") {
			return missing + ": " + p.Error
		}
		return missing
	}
	if p.Version == "" {
		return "importable (version unknown)"
	}
	return p.Version
}
