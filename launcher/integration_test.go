package launcher

// The real runner on the CPU: `python -m mdn.runner` with the echo and doctor jobs. Skipped, with the reason,
// when no interpreter with the mdn package is around ($MDN_PYTHON, else <repo>/.venv/bin/python).

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func realPython(t *testing.T) (string, string) {
	t.Helper()
	wd, _ := os.Getwd()
	root := FindRepoRoot(wd)
	if root == "" {
		t.Skip("integration: no mdnctl checkout above " + wd)
	}
	py := os.Getenv("MDN_PYTHON")
	if py == "" {
		py = filepath.Join(root, ".venv", "bin", "python")
	}
	if _, err := os.Stat(py); err != nil {
		t.Skipf("integration: no Python at %s (set MDN_PYTHON or run `make setup`); the real runner is not tested", py)
	}
	return py, root
}

func TestIntegrationEcho(t *testing.T) {
	py, root := realPython(t)
	var events []string
	var stderr syncBuffer
	opts := Options{Python: py, Dir: root, Timeout: 2 * time.Minute, Stderr: &stderr,
		OnEvent: func(ev Event) { events = append(events, ev.Event) }}
	w, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	out, err := w.Do(context.Background(), Spec{ID: "e1", Kind: "echo", Params: map[string]any{
		"steps": 2, "stray_print": true, "non_finite": true}})
	if err != nil {
		t.Fatalf("echo: %v", err)
	}
	var res struct {
		Echo map[string]any
		NaN  Float `json:"nan"`
		Inf  Float `json:"inf"`
	}
	if err := out.DecodeResult(&res); err != nil {
		t.Fatalf("decode %s: %v", out.Result, err)
	}
	if res.Echo["steps"] != float64(2) || !isNaN(float64(res.NaN)) || float64(res.Inf) <= 1e308 {
		t.Errorf("result = %s", out.Result)
	}
	if got := strings.Join(events, ","); got != "start,progress,progress,metric,result,end" {
		t.Errorf("events = %s", got)
	}
	if !strings.Contains(stderr.String(), "stray os.write(1)") {
		t.Errorf("stray output must go to stderr; stderr = %q", stderr.String())
	}

	// The same warm runner: a job error, then a good job again.
	_, err = w.Do(context.Background(), Spec{ID: "e2", Kind: "echo", Params: map[string]any{"fail": "bad width", "fail_kind": "user"}})
	var je *JobError
	if !errors.As(err, &je) || je.Kind != "user" || je.Message != "bad width" {
		t.Fatalf("err = %v, want JobError user: bad width", err)
	}
	if _, err := w.Do(context.Background(), Spec{ID: "e3", Kind: "echo"}); err != nil {
		t.Fatalf("after a job error: %v", err)
	}
	_, err = w.Do(context.Background(), Spec{ID: "e4", Kind: "no_such_kind"})
	if !errors.As(err, &je) || je.Kind != "user" {
		t.Fatalf("unknown kind: %v", err)
	}
	// A crash mid-job: the exit status and stderr come back as an ExitError.
	_, err = w.Do(context.Background(), Spec{ID: "e5", Kind: "echo", Params: map[string]any{"exit": 7}})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 7 {
		t.Fatalf("crash: %v, want ExitError status 7", err)
	}
}

func TestIntegrationTimeoutKillsRealRunner(t *testing.T) {
	py, root := realPython(t)
	opts := Options{Python: py, Dir: root, Timeout: 1500 * time.Millisecond, Grace: time.Second}
	var pid int
	opts.OnEvent = func(ev Event) {
		if ev.Event == "start" {
			pid = ev.PID
		}
	}
	_, err := Run(context.Background(), opts, Spec{ID: "slow", Kind: "echo", Params: map[string]any{"steps": 1, "sleep": 60}})
	var te *TimeoutError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v, want TimeoutError", err)
	}
	if pid == 0 || processAlive(pid) {
		t.Fatalf("runner pid %d still alive after the timeout", pid)
	}
}

func TestIntegrationDoctor(t *testing.T) {
	py, root := realPython(t)
	out, err := Run(context.Background(), Options{Python: py, Dir: root, Timeout: 3 * time.Minute},
		Spec{ID: "doc", Kind: "doctor"})
	if err != nil {
		t.Fatalf("doctor: %v", err)
	}
	var rep struct {
		Python   struct{ Executable, Version string }
		Packages map[string]struct {
			Importable bool
			Version    string
			Error      string
		}
		Cuda struct {
			Available   bool
			DeviceCount int `json:"device_count"`
			Devices     []json.RawMessage
		}
		Backend string
	}
	if err := out.DecodeResult(&rep); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if rep.Python.Version == "" || rep.Python.Executable == "" {
		t.Errorf("python = %+v", rep.Python)
	}
	for _, name := range []string{"torch", "triton", "numpy"} {
		if p := rep.Packages[name]; !p.Importable || p.Version == "" {
			t.Errorf("%s = %+v, want importable with a version in the set-up environment", name, p)
		}
	}
	if _, ok := rep.Packages["fla"]; !ok {
		t.Error("doctor must report fla")
	}
	if len(rep.Cuda.Devices) != rep.Cuda.DeviceCount {
		t.Errorf("cuda = %+v", rep.Cuda)
	}
	switch rep.Backend {
	case "gpu", "interpreter", "torch":
	default:
		t.Errorf("backend = %q", rep.Backend)
	}
}
