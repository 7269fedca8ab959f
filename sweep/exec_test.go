package sweep

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/results"
)

// fakeRunner stands in for python -m mdn.runner: it answers probes and runs points with a behaviour function.
type fakeRunner struct {
	mu       sync.Mutex
	starts   map[string]int      // slot name -> workers started
	envs     map[string][]string // slot name -> env of the last worker
	jobs     map[string][]string // slot name -> point ids run
	startErr func(slot Slot) error
	behave   func(w *fakeWorker, spec launcher.Spec) (*launcher.Outcome, error)
}

func newFake() *fakeRunner {
	return &fakeRunner{starts: map[string]int{}, envs: map[string][]string{}, jobs: map[string][]string{}}
}

type fakeWorker struct {
	r      *fakeRunner
	slot   Slot
	stderr io.Writer
	dead   bool
}

func (r *fakeRunner) start(slot Slot, stderr io.Writer) (Worker, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.startErr != nil {
		if err := r.startErr(slot); err != nil {
			return nil, err
		}
	}
	r.starts[slot.Name]++
	r.envs[slot.Name] = slot.Env
	return &fakeWorker{r: r, slot: slot, stderr: stderr}, nil
}

func (w *fakeWorker) Do(ctx context.Context, spec launcher.Spec) (*launcher.Outcome, error) {
	if w.dead {
		return nil, errors.New("launcher: worker is no longer running")
	}
	if spec.Params["probe"] == true {
		res, _ := json.Marshal(map[string]any{"device_name": "Fake " + w.slot.Name, "versions": map[string]any{"torch": "0.fake"},
			"import_s": 0.25, "job_start_t": float64(time.Now().UnixNano()) / 1e9})
		return &launcher.Outcome{JobID: spec.ID, Result: res, Host: "fakehost"}, nil
	}
	w.r.mu.Lock()
	w.r.jobs[w.slot.Name] = append(w.r.jobs[w.slot.Name], spec.ID)
	w.r.mu.Unlock()
	if w.r.behave != nil {
		return w.r.behave(w, spec)
	}
	return okOutcome(spec, 1.5), nil
}

func (w *fakeWorker) Close() error { w.dead = true; return nil }

func okOutcome(spec launcher.Spec, ms float64) *launcher.Outcome {
	res, _ := json.Marshal(map[string]any{"median_ms": ms, "p20_ms": ms * 0.9, "p80_ms": ms * 1.1, "tokens_per_s": 1e6,
		"peak_mem_gib": 0.5, "timed_s": 0.1, "job_timing": map[string]any{"job_s": 0.12}, "device_name": "Fake"})
	return &launcher.Outcome{JobID: spec.ID, Result: res, Host: "fakehost"}
}

// memSink keeps rows in memory.
type memSink struct {
	mu   sync.Mutex
	rows []results.Row
}

func (s *memSink) Append(row any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rows = append(s.rows, row.(results.Row))
	return nil
}

func smallPlan(t *testing.T, nT int) (*File, []Point) {
	t.Helper()
	ts := make([]string, nT)
	for i := range ts {
		ts[i] = fmt.Sprint(16 * (i + 1))
	}
	src := fmt.Sprintf("timeout = \"5s\"\n[axes]\nop = [\"mdn\", \"gdn\"]\nT = [%s]\nB = 1\nH = 2\nK = 16\nV = 16\n", strings.Join(ts, ", "))
	f, err := Parse("sweeps/small.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := f.Expand()
	if err != nil {
		t.Fatal(err)
	}
	return f, plan.Points
}

func opts(r *fakeRunner, sink Sink, slots ...Slot) Options {
	if len(slots) == 0 {
		slots = []Slot{CPUSlot()}
	}
	return Options{Slots: slots, Start: r.start, Sink: sink, Version: "test"}
}

func byPoint(rows []results.Row) map[string]results.Row {
	m := map[string]results.Row{}
	for _, r := range rows {
		m[results.Str(r, "point")] = r
	}
	return m
}

func TestExecuteAllOK(t *testing.T) {
	f, pts := smallPlan(t, 3)
	r, sink := newFake(), &memSink{}
	sum, err := Execute(context.Background(), f, pts, 0, opts(r, sink))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Ran != 6 || sum.Statuses["ok"] != 6 || len(sink.rows) != 6 || r.starts["cpu"] != 1 {
		t.Fatalf("summary %+v rows %d starts %v", sum, len(sink.rows), r.starts)
	}
	row := sink.rows[0]
	for _, k := range []string{"sweep", "point", "variant", "status", "op", "T", "chunk_size", "dtype", "device", "versions",
		"median_ms", "p20_ms", "p80_ms", "tokens_per_s", "peak_mem_gib", "overhead", "params", "launch"} {
		if _, ok := row[k]; !ok {
			t.Errorf("row lacks %s: %v", k, row)
		}
	}
	if row["versions"].(map[string]any)["mdnctl"] != "test" || row["versions"].(map[string]any)["torch"] != "0.fake" {
		t.Errorf("versions %v", row["versions"])
	}
	oh := row["overhead"].(map[string]any)
	if oh["cold"] != true || oh["import_s"] != 0.25 || sink.rows[1]["overhead"].(map[string]any)["cold"] != false {
		t.Errorf("overhead %v / %v", oh, sink.rows[1]["overhead"])
	}
	if sink.rows[1]["overhead"].(map[string]any)["job_s"] != 0.12 {
		t.Errorf("job_s %v", sink.rows[1]["overhead"])
	}
	params := row["params"].(map[string]any)
	if params["device"] != "cpu" || params["timer"] != "wall_clock" || params["op"] != "mdn" {
		t.Errorf("params %v", params)
	}
	if sum.Overhead.LauncherMS <= 0 && sum.Overhead.WarmWallS > 0.12 {
		t.Errorf("overhead stats %+v", sum.Overhead)
	}
}

// A crash, a failed job or a timeout becomes a row; the worker is restarted and the sweep goes on.
func TestFailureIsolation(t *testing.T) {
	f, pts := smallPlan(t, 4)
	r, sink := newFake(), &memSink{}
	fate := map[string]string{pts[1].ID: "crash", pts[2].ID: "incorrect", pts[3].ID: "unavailable", pts[4].ID: "timeout",
		pts[5].ID: "oom", pts[6].ID: "protocol"}
	r.behave = func(w *fakeWorker, spec launcher.Spec) (*launcher.Outcome, error) {
		switch fate[spec.ID] {
		case "crash":
			fmt.Fprintf(w.stderr, "Traceback (most recent call last):\nRuntimeError: CUDA error: illegal memory access\n")
			w.dead = true
			return nil, &launcher.ExitError{Code: -1, Signal: "segmentation fault"}
		case "incorrect":
			m, _ := json.Marshal(map[string]any{"check": map[string]any{"passed": false, "errors": map[string]any{"o": 0.4}}})
			return &launcher.Outcome{Metrics: []json.RawMessage{m}}, &launcher.JobError{Job: spec.ID, Kind: "incorrect", Message: "o: rel error 0.4 > 0.02"}
		case "unavailable":
			return &launcher.Outcome{}, &launcher.JobError{Job: spec.ID, Kind: "unavailable", Message: "fla is not installed"}
		case "oom":
			return &launcher.Outcome{}, &launcher.JobError{Job: spec.ID, Kind: "oom", Message: "CUDA out of memory"}
		case "protocol":
			w.dead = true
			return nil, &launcher.ProtocolError{Line: "garbage", Err: errors.New("invalid character")}
		}
		return okOutcome(spec, 1), nil
	}
	// The timeout point blocks until its deadline, as a hung kernel would.
	o := opts(r, sink)
	o.Start = func(slot Slot, stderr io.Writer) (Worker, error) {
		w, err := r.start(slot, stderr)
		if err != nil {
			return nil, err
		}
		return &deadlineWorker{fakeWorker: w.(*fakeWorker), slow: func(id string) bool { return fate[id] == "timeout" }}, nil
	}
	o.Timeout = 50 * time.Millisecond
	sum, err := Execute(context.Background(), f, pts, 0, o)
	if err != nil {
		t.Fatal(err)
	}
	rows := byPoint(sink.rows)
	if len(rows) != 8 {
		t.Fatalf("%d rows", len(rows))
	}
	want := map[int]string{0: "ok", 1: "failed", 2: "incorrect", 3: "unavailable", 4: "timeout", 5: "failed", 6: "failed", 7: "ok"}
	for i, st := range want {
		if got := results.Str(rows[pts[i].ID], "status"); got != st {
			t.Errorf("point %d: status %q want %q (%v)", i, got, st, rows[pts[i].ID])
		}
	}
	crash := rows[pts[1].ID]
	if crash["error_kind"] != "crash" || !strings.Contains(crash["reason"].(string), "segmentation fault") {
		t.Errorf("crash row %v", crash)
	}
	tail, _ := crash["stderr_tail"].([]string)
	if len(tail) != 2 || !strings.Contains(tail[1], "illegal memory access") {
		t.Errorf("stderr tail %q", tail)
	}
	if rows[pts[2].ID]["check"] == nil || rows[pts[2].ID]["reason"] != "o: rel error 0.4 > 0.02" {
		t.Errorf("incorrect row keeps the gate's errors: %v", rows[pts[2].ID])
	}
	if rows[pts[5].ID]["error_kind"] != "oom" || rows[pts[6].ID]["error_kind"] != "protocol" {
		t.Errorf("kinds %v %v", rows[pts[5].ID]["error_kind"], rows[pts[6].ID]["error_kind"])
	}
	if tail, _ := rows[pts[4].ID]["stderr_tail"].([]string); len(tail) != 1 || tail[0] != "autotuning..." {
		t.Errorf("timeout tail %q", tail)
	}
	// Restarted after the crash, the timeout, the oom and the protocol error: 1 + 4 workers.
	if r.starts["cpu"] != 5 || sum.Restarts != 4 {
		t.Errorf("starts %v restarts %d", r.starts, sum.Restarts)
	}
	if _, ok := rows[pts[0].ID]["stderr_tail"]; ok {
		t.Error("ok rows carry no stderr")
	}
}

// deadlineWorker makes chosen points block until their deadline, as a hung kernel would.
type deadlineWorker struct {
	*fakeWorker
	slow func(id string) bool
}

func (d *deadlineWorker) Do(ctx context.Context, spec launcher.Spec) (*launcher.Outcome, error) {
	if d.slow(spec.ID) {
		fmt.Fprintf(d.stderr, "autotuning...\n")
		<-ctx.Done()
		d.dead = true
		return nil, ctx.Err()
	}
	return d.fakeWorker.Do(ctx, spec)
}

// One worker per GPU, each seeing only its GPU; points spread over both.
func TestGPUAssignment(t *testing.T) {
	f, pts := smallPlan(t, 8)
	r, sink := newFake(), &memSink{}
	r.behave = func(w *fakeWorker, spec launcher.Spec) (*launcher.Outcome, error) {
		time.Sleep(5 * time.Millisecond)
		if spec.Params["device"] != "cuda" || spec.Params["timer"] != "do_bench" {
			return nil, fmt.Errorf("bad params %v", spec.Params)
		}
		return okOutcome(spec, 1), nil
	}
	slots, err := Slots("0,1", []string{"0", "1", "2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Execute(context.Background(), f, pts, 0, opts(r, sink, slots...)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"0", "1"} {
		env := strings.Join(r.envs["gpu"+id], " ")
		if env != "CUDA_VISIBLE_DEVICES="+id {
			t.Errorf("gpu%s env %q", id, env)
		}
		if len(r.jobs["gpu"+id]) == 0 {
			t.Errorf("gpu%s ran nothing", id)
		}
	}
	if len(r.jobs["gpu0"])+len(r.jobs["gpu1"]) != 16 || len(sink.rows) != 16 {
		t.Errorf("jobs %v", r.jobs)
	}
	for _, row := range sink.rows {
		if g := row["gpu"]; g != "0" && g != "1" || results.Str(row, "slot") != "gpu"+g.(string) {
			t.Errorf("row gpu %v slot %v", row["gpu"], row["slot"])
		}
	}
}

func TestSlotsParsing(t *testing.T) {
	s, _ := Slots("all", nil)
	if len(s) != 1 || s[0].Name != "cpu" || !strings.Contains(strings.Join(s[0].Env, " "), "TRITON_INTERPRET=1") {
		t.Fatalf("no GPU: %v", s)
	}
	s, _ = Slots("", []string{"0", "1"})
	if len(s) != 2 || s[1].Name != "gpu1" {
		t.Fatalf("all: %v", s)
	}
	for _, bad := range []string{"0,0", "3", ","} {
		if _, err := Slots(bad, []string{"0", "1"}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	ids := ParseGPUList("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-a)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-b)\n")
	if strings.Join(ids, ",") != "0,1" {
		t.Fatalf("parse %v", ids)
	}
}

// A slot whose worker cannot start gives its points to the others; when none can start, the sweep stops
// without writing rows for points that never ran.
func TestWorkerStartFailure(t *testing.T) {
	f, pts := smallPlan(t, 3)
	r, sink := newFake(), &memSink{}
	r.startErr = func(s Slot) error {
		if s.GPU == "1" {
			return errors.New("no such device")
		}
		return nil
	}
	slots, _ := Slots("0,1", nil)
	sum, err := Execute(context.Background(), f, pts, 0, opts(r, sink, slots...))
	if err != nil || sum.Ran != 6 || len(r.jobs["gpu0"]) != 6 {
		t.Fatalf("err %v ran %d jobs %v", err, sum.Ran, r.jobs)
	}
	r2, sink2 := newFake(), &memSink{}
	r2.startErr = func(Slot) error { return errors.New("python: not found") }
	_, err = Execute(context.Background(), f, pts, 0, opts(r2, sink2, slots...))
	if !errors.Is(err, ErrNoWorker) || len(sink2.rows) != 0 || !strings.Contains(err.Error(), "python: not found") {
		t.Fatalf("err %v rows %d", err, len(sink2.rows))
	}
}

// Cancelling (Ctrl-C) leaves no row for the point in flight.
func TestCancelLeavesNoPartialRow(t *testing.T) {
	f, pts := smallPlan(t, 3)
	r, sink := newFake(), &memSink{}
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	r.behave = func(w *fakeWorker, spec launcher.Spec) (*launcher.Outcome, error) {
		n++
		if n == 3 {
			cancel()
			return nil, context.Canceled
		}
		return okOutcome(spec, 1), nil
	}
	_, err := Execute(ctx, f, pts, 0, opts(r, sink))
	if !errors.Is(err, context.Canceled) || len(sink.rows) != 2 {
		t.Fatalf("err %v rows %d", err, len(sink.rows))
	}
}

// killSink writes rows through a real results.Writer until row killRow, of which it writes only cut(len) bytes
// straight to the file before "dying": the state a kill -9 at that byte of the write path leaves on disk.
type killSink struct {
	w       *results.Writer
	path    string
	killRow int
	cut     func(n int) int
	n       int
}

var errKilled = errors.New("killed")

func (k *killSink) Append(row any) error {
	if k.n < k.killRow {
		k.n++
		return k.w.Append(row)
	}
	b, _ := json.Marshal(row)
	b = append(b, '\n')
	f, err := os.OpenFile(k.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	f.Write(b[:k.cut(len(b))])
	f.Close()
	return errKilled
}

// runResumable runs the pending points of pts into path, as `mdnctl sweep --resume` does.
func runResumable(t *testing.T, f *File, pts []Point, path string, wrap func(*results.Writer) Sink) (int, error) {
	t.Helper()
	w, _, err := results.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rows, _, err := results.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	todo, skipped := Pending(pts, results.NewIndex(rows), false)
	if len(todo) == 0 {
		return 0, nil
	}
	var sink Sink = w
	if wrap != nil {
		sink = wrap(w)
	}
	_, err = Execute(context.Background(), f, todo, skipped, opts(newFake(), sink))
	return len(todo), err
}

// Killing the sweep at every point of the write path (before a row, after its first byte, mid-row, with all but
// its newline, and right after it), then resuming, gives exactly one complete row per point.
func TestResumeAfterKill(t *testing.T) {
	f, pts := smallPlan(t, 2) // 4 points
	cuts := map[string]func(int) int{
		"nothing":         func(int) int { return 0 },
		"one byte":        func(int) int { return 1 },
		"half":            func(n int) int { return n / 2 },
		"all but newline": func(n int) int { return n - 1 },
		"whole line":      func(n int) int { return n },
	}
	dir := t.TempDir()
	for killRow := 0; killRow < len(pts); killRow++ {
		for name, cut := range cuts {
			path := filepath.Join(dir, fmt.Sprintf("%d-%s", killRow, strings.ReplaceAll(name, " ", "_")), results.FileName)
			_, err := runResumable(t, f, pts, path, func(w *results.Writer) Sink {
				return &killSink{w: w, path: path, killRow: killRow, cut: cut}
			})
			if !errors.Is(err, errKilled) {
				t.Fatalf("row %d %s: %v", killRow, name, err)
			}
			ran, err := runResumable(t, f, pts, path, nil)
			if err != nil {
				t.Fatalf("row %d %s: resume: %v", killRow, name, err)
			}
			wantRan := len(pts) - killRow
			if name == "whole line" {
				wantRan-- // the killed row made it to disk: that point is done
			}
			if ran != wantRan {
				t.Errorf("row %d %s: resume ran %d points, want %d", killRow, name, ran, wantRan)
			}
			rows, info, err := results.Read(path)
			if err != nil || info.TornTail || len(info.BadLines) > 0 {
				t.Fatalf("row %d %s: %+v %v", killRow, name, info, err)
			}
			seen := map[string]int{}
			for _, r := range rows {
				seen[results.Str(r, "point")]++
			}
			for _, p := range pts {
				if seen[p.ID] != 1 {
					t.Fatalf("row %d %s: point %s has %d rows", killRow, name, p.ID, seen[p.ID])
				}
			}
			if len(rows) != len(pts) {
				t.Fatalf("row %d %s: %d rows", killRow, name, len(rows))
			}
			// Running again finds everything done: no work.
			if ran, err := runResumable(t, f, pts, path, nil); ran != 0 || err != nil {
				t.Fatalf("row %d %s: third run did %d points (%v)", killRow, name, ran, err)
			}
		}
	}
}

func TestRerunSelection(t *testing.T) {
	_, pts := smallPlan(t, 2)
	v := pts[0].Variant
	sel := Select(pts, v[:6])
	if len(sel) != 2 { // mdn at T=16 and T=32 share the variant
		t.Fatalf("select %d", len(sel))
	}
	if len(Select(pts, pts[3].ID)) != 1 || len(Select(pts, "abc")) != 0 {
		t.Fatal("point id / short prefix")
	}
	// Rows of an earlier run rebuild their points exactly.
	var rows []results.Row
	for _, p := range pts {
		b, _ := json.Marshal(map[string]any{"point": p.ID, "variant": p.Variant, "status": "ok"})
		var r results.Row
		json.Unmarshal(b, &r)
		for k, val := range p.Values {
			r[k] = val
		}
		b, _ = json.Marshal(r) // through JSON, as read from a file: ints become floats
		r = nil
		json.Unmarshal(b, &r)
		rows = append(rows, r)
	}
	back := PointsFromRows(rows, v)
	if len(back) != 2 || back[0].ID != pts[0].ID || back[0].Variant != v || back[0].Values["T"] != int64(16) {
		t.Fatalf("from rows: %+v", back)
	}
}

// The summary counts the warm points whose gate the worker answered from its cache, and the median of the others.
func TestOverheadCountsCachedGates(t *testing.T) {
	f, pts := smallPlan(t, 3)
	r, sink := newFake(), &memSink{}
	cached := map[string]bool{pts[2].ID: true, pts[3].ID: true, pts[5].ID: true}
	r.behave = func(w *fakeWorker, spec launcher.Spec) (*launcher.Outcome, error) {
		check := 2.0
		if cached[spec.ID] {
			check = 0.001
		}
		res, _ := json.Marshal(map[string]any{"median_ms": 1.0, "timed_s": 0.1, "device_name": "Fake",
			"job_timing": map[string]any{"job_s": 3.0, "check_s": check, "check_cached": cached[spec.ID]}})
		return &launcher.Outcome{JobID: spec.ID, Result: res, Host: "fakehost"}, nil
	}
	sum, err := Execute(context.Background(), f, pts, 0, opts(r, sink))
	if err != nil {
		t.Fatal(err)
	}
	oh := sum.Overhead // the first point is cold and not counted: 5 warm points, 3 cached
	if oh.WarmChecks != 5 || oh.WarmChecksCached != 3 || oh.WarmCheckFreshS != 2.0 || oh.WarmCheckS != 0.001 {
		t.Errorf("overhead %+v", oh)
	}
	b, _ := json.Marshal(oh)
	for _, k := range []string{`"warm_point_checks":5`, `"warm_point_checks_cached":3`, `"warm_point_check_s_median":0.001`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("json %s lacks %s", b, k)
		}
	}
}

// scancel signals the whole process group: the runner can die of SIGTERM a moment before our own context is
// cancelled. That point is an interruption (no row; resume runs it), not a failed point.
func TestRunnerKilledBySIGTERMBeforeOurCancelIsNoRow(t *testing.T) {
	f, pts := smallPlan(t, 3)
	r, sink := newFake(), &memSink{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	r.behave = func(w *fakeWorker, spec launcher.Spec) (*launcher.Outcome, error) {
		n++
		if n == 3 {
			go func() { time.Sleep(50 * time.Millisecond); cancel() }()
			return nil, &launcher.ExitError{Job: spec.ID, Code: -1, Signal: "terminated"}
		}
		return okOutcome(spec, 1), nil
	}
	_, err := Execute(ctx, f, pts, 0, opts(r, sink))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	for _, row := range sink.rows {
		if results.Str(row, "status") != results.StatusOK {
			t.Fatalf("a point killed by the group's SIGTERM was recorded: %v", row)
		}
	}
	if len(sink.rows) != 2 {
		t.Fatalf("rows %d, want the 2 points before the signal", len(sink.rows))
	}
}

// A runner killed by SIGTERM twice for the same point while we go on is a failed point.
func TestRunnerKilledBySIGTERMAloneIsAFailedRow(t *testing.T) {
	f, pts := smallPlan(t, 1)
	r, sink := newFake(), &memSink{}
	r.behave = func(w *fakeWorker, spec launcher.Spec) (*launcher.Outcome, error) {
		if spec.ID == pts[0].ID {
			return nil, &launcher.ExitError{Job: spec.ID, Code: -1, Signal: "terminated"}
		}
		return okOutcome(spec, 1), nil
	}
	o := opts(r, sink)
	o.SignalGrace = 20 * time.Millisecond
	if _, err := Execute(context.Background(), f, pts, 0, o); err != nil {
		t.Fatal(err)
	}
	row := byPoint(sink.rows)[pts[0].ID]
	if results.Str(row, "status") != results.StatusFailed || !strings.Contains(results.Str(row, "reason"), "terminated") {
		t.Fatalf("want a failed row naming the signal, got %v", row)
	}
}

// Slurm may signal the runner alone (by cgroup) while mdnctl is not cancelled: the point goes back to the queue
// once and runs again on a fresh worker, so an interruption never becomes a failed row.
func TestRunnerKilledBySIGTERMOnceIsRetried(t *testing.T) {
	f, pts := smallPlan(t, 2)
	r, sink := newFake(), &memSink{}
	killed := false
	r.behave = func(w *fakeWorker, spec launcher.Spec) (*launcher.Outcome, error) {
		if spec.ID == pts[1].ID && !killed {
			killed = true
			w.dead = true
			return nil, &launcher.ExitError{Job: spec.ID, Code: -1, Signal: "terminated"}
		}
		return okOutcome(spec, 1), nil
	}
	o := opts(r, sink)
	o.SignalGrace = 20 * time.Millisecond
	if _, err := Execute(context.Background(), f, pts, 0, o); err != nil {
		t.Fatal(err)
	}
	if len(sink.rows) != len(pts) {
		t.Fatalf("rows %d, want %d", len(sink.rows), len(pts))
	}
	for _, row := range sink.rows {
		if results.Str(row, "status") != results.StatusOK {
			t.Fatalf("every point should end ok, got %v", row)
		}
	}
	if r.starts[CPUSlot().Name] != 2 {
		t.Fatalf("workers started %d, want 2 (a fresh one after the kill)", r.starts[CPUSlot().Name])
	}
}

// The summary names the slowest points (any status), slowest first, with the gate and first-call parts.
func TestOverheadListsTheSlowestPoints(t *testing.T) {
	f, pts := smallPlan(t, 3)
	r, sink := newFake(), &memSink{}
	now := time.Unix(1000, 0)
	o := opts(r, sink)
	o.Now = func() time.Time { return now }
	walls := map[string]float64{pts[1].ID: 40, pts[3].ID: 250, pts[4].ID: 7, pts[5].ID: 90}
	r.behave = func(w *fakeWorker, spec launcher.Spec) (*launcher.Outcome, error) {
		now = now.Add(time.Duration(walls[spec.ID] * float64(time.Second)))
		res, _ := json.Marshal(map[string]any{"median_ms": 1.0, "timed_s": 0.1, "device_name": "Fake",
			"job_timing": map[string]any{"job_s": walls[spec.ID], "check_s": walls[spec.ID] / 2,
				"first_call_s": walls[spec.ID] / 4}})
		return &launcher.Outcome{JobID: spec.ID, Result: res, Host: "fakehost"}, nil
	}
	sum, err := Execute(context.Background(), f, pts, 0, o)
	if err != nil {
		t.Fatal(err)
	}
	sl := sum.Overhead.Slowest
	if len(sl) != 3 || sl[0].Point != pts[3].ID || sl[1].Point != pts[5].ID || sl[2].Point != pts[1].ID {
		t.Fatalf("slowest %+v", sl)
	}
	if sl[0].WallS != 250 || sl[0].CheckS != 125 || sl[0].FirstCallS != 62.5 || sl[0].Status != "ok" ||
		!strings.Contains(sl[0].Label, "T") {
		t.Errorf("slowest[0] %+v", sl[0])
	}
}
