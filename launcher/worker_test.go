package launcher

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func job(id, do string, extra ...any) Spec {
	p := map[string]any{"do": do}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i].(string)] = extra[i+1]
	}
	return Spec{ID: id, Kind: "fake", Params: p}
}

// waitGone fails the test unless pid stops running (zombies count as gone) within d.
func waitGone(t *testing.T, what string, pid int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) still running %s after the call returned: orphan left behind", what, pid, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pidRecorder collects the runner's pid (start event) and a grandchild pid (metric data) from events.
type pidRecorder struct {
	mu                sync.Mutex
	child, grandchild int
	events            []string
	onGrandchild      func()
}

func (r *pidRecorder) onEvent(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev.Event)
	if ev.Event == "start" {
		r.child = ev.PID
	}
	if ev.Event == "metric" {
		var d struct{ Grandchild int }
		if json.Unmarshal(ev.Data, &d) == nil && d.Grandchild != 0 {
			r.grandchild = d.Grandchild
			if r.onGrandchild != nil {
				r.onGrandchild()
			}
		}
	}
}

func (r *pidRecorder) pids() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.child, r.grandchild
}

func TestRunClean(t *testing.T) {
	opts := fakeOptions(t)
	var rec pidRecorder
	opts.OnEvent = rec.onEvent
	out, err := Run(context.Background(), opts, job("j1", "clean", "n", 3))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var res struct {
		Echo map[string]any
		PID  int
	}
	if err := out.DecodeResult(&res); err != nil {
		t.Fatalf("DecodeResult: %v", err)
	}
	if res.Echo["do"] != "clean" || res.Echo["n"] != float64(3) {
		t.Errorf("result echo = %v, want the params back", res.Echo)
	}
	if out.JobID != "j1" || out.Host != "fakehost" || out.PID != res.PID || out.PID == 0 {
		t.Errorf("outcome = %+v, want job j1 on fakehost with the runner's pid %d", out, res.PID)
	}
	if len(out.Metrics) != 1 {
		t.Fatalf("metrics = %d, want 1", len(out.Metrics))
	}
	var m struct {
		Step int
		Loss Float
	}
	if err := json.Unmarshal(out.Metrics[0], &m); err != nil || m.Step != 1 || !isNaN(float64(m.Loss)) {
		t.Errorf("metric = %s (%v), want step 1 and loss NaN", out.Metrics[0], err)
	}
	if got := strings.Join(rec.events, ","); got != "start,progress,progress,metric,result,end" {
		t.Errorf("events = %s", got)
	}
	if out.Elapsed <= 0 {
		t.Errorf("elapsed = %v, want > 0", out.Elapsed)
	}
	waitGone(t, "runner", out.PID, time.Second)
}

func isNaN(x float64) bool { return x != x }

func TestRunCrashKeepsStderrTail(t *testing.T) {
	_, err := Run(context.Background(), fakeOptions(t), job("j2", "crash"))
	var ee *ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("err = %T %v, want *ExitError", err, err)
	}
	if ee.Code != 3 || ee.Signal != "" || ee.Job != "j2" {
		t.Errorf("ExitError = %+v, want code 3 for job j2", ee)
	}
	tail := strings.Join(ee.Tail(), "\n")
	if !strings.Contains(tail, "Traceback (most recent call last):") || !strings.HasSuffix(tail, "RuntimeError: boom") {
		t.Errorf("tail = %q, want the traceback ending in the exception", tail)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "status 3") || !strings.Contains(msg, "RuntimeError: boom") {
		t.Errorf("Error() = %q, want one line with the status and the last stderr line", msg)
	}
}

func TestRunKilledBySignal(t *testing.T) {
	_, err := Run(context.Background(), fakeOptions(t), job("j", "signal"))
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != -1 || ee.Signal != "killed" {
		t.Fatalf("err = %v (%+v), want ExitError killed by signal", err, ee)
	}
	if !strings.Contains(err.Error(), "was killed by killed") && !strings.Contains(err.Error(), "killed") {
		t.Errorf("Error() = %q", err.Error())
	}
}

func TestRunMalformedLine(t *testing.T) {
	opts := fakeOptions(t)
	var rec pidRecorder
	opts.OnEvent = rec.onEvent
	_, err := Run(context.Background(), opts, job("j3", "malformed"))
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %T %v, want *ProtocolError", err, err)
	}
	if pe.Line != "Loading checkpoint shards: 100%" || pe.Job != "j3" {
		t.Errorf("ProtocolError = %+v, want the offending line and the job", pe)
	}
	if !strings.Contains(strings.Join(pe.Tail(), "\n"), `fake: job j3 does "malformed"`) {
		t.Errorf("tail = %q, want the runner's stderr", pe.Tail())
	}
	child, _ := rec.pids()
	waitGone(t, "runner", child, time.Second)
}

func TestRunProtocolViolations(t *testing.T) {
	for _, tc := range []struct{ do, want string }{
		{"badversion", "protocol version 99"},
		{"badend", `status "maybe"`},
		{"longline", "longer than 1024 bytes"},
	} {
		t.Run(tc.do, func(t *testing.T) {
			opts := fakeOptions(t)
			opts.MaxLineLen = 1024
			_, err := Run(context.Background(), opts, job("j", tc.do))
			var pe *ProtocolError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a ProtocolError mentioning %q", err, tc.want)
			}
		})
	}
}

func TestRunTimeoutKillsRunner(t *testing.T) {
	opts := fakeOptions(t)
	opts.Timeout = 300 * time.Millisecond
	var rec pidRecorder
	opts.OnEvent = rec.onEvent
	t0 := time.Now()
	_, err := Run(context.Background(), opts, job("j4", "hang"))
	took := time.Since(t0)
	var te *TimeoutError
	if !errors.As(err, &te) || te.Job != "j4" || te.After != opts.Timeout {
		t.Fatalf("err = %T %v, want *TimeoutError for j4 after %s", err, err, opts.Timeout)
	}
	if took > opts.Timeout+opts.Grace+2*time.Second {
		t.Errorf("Run took %s, want about timeout + grace", took)
	}
	child, _ := rec.pids()
	if child == 0 {
		t.Fatal("no start event seen")
	}
	waitGone(t, "runner", child, 100*time.Millisecond)
}

// Ctrl-C: mdnctl's context is cancelled. The runner and a grandchild both ignore SIGTERM; after the grace
// period SIGKILL must reach the whole process group, so nothing is left behind.
func TestCancelKillsWholeProcessGroup(t *testing.T) {
	opts := fakeOptions(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := pidRecorder{onGrandchild: cancel}
	opts.OnEvent = rec.onEvent
	t0 := time.Now()
	_, err := Run(ctx, opts, job("j5", "orphan"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if took := time.Since(t0); took > 5*time.Second {
		t.Errorf("cancel took %s", took)
	}
	child, grandchild := rec.pids()
	if child == 0 || grandchild == 0 {
		t.Fatalf("pids child=%d grandchild=%d, want both seen", child, grandchild)
	}
	// Run returns only after the group is gone: no polling slack is needed.
	waitGone(t, "runner", child, 0)
	waitGone(t, "grandchild that ignores SIGTERM", grandchild, 0)
}

func TestChildExitsWhileGrandchildHoldsPipes(t *testing.T) {
	opts := fakeOptions(t)
	var rec pidRecorder
	opts.OnEvent = rec.onEvent
	t0 := time.Now()
	_, err := Run(context.Background(), opts, job("j", "exitheld"))
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 1 {
		t.Fatalf("err = %T %v, want ExitError status 1", err, err)
	}
	if !strings.Contains(err.Error(), "ValueError: exiting while a grandchild holds the pipes") {
		t.Errorf("Error() = %q, want the last stderr line", err.Error())
	}
	if took := time.Since(t0); took > drainDelay+opts.Grace+3*time.Second {
		t.Errorf("took %s: a grandchild holding stdout must not make us wait forever", took)
	}
	_, grandchild := rec.pids()
	waitGone(t, "grandchild", grandchild, 0)
}

func TestGraceLetsRunnerExitOnSIGTERM(t *testing.T) {
	opts := fakeOptions(t)
	opts.Grace = 10 * time.Second // a SIGKILL would only come after 10 s
	opts.Timeout = 200 * time.Millisecond
	var stderr syncBuffer
	opts.Stderr = &stderr
	t0 := time.Now()
	_, err := Run(context.Background(), opts, job("j", "termslow"))
	var te *TimeoutError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v, want TimeoutError", err)
	}
	if took := time.Since(t0); took > 3*time.Second {
		t.Errorf("took %s: a runner that exits on SIGTERM must not wait out the grace period", took)
	}
	if !strings.Contains(stderr.String(), "got SIGTERM, saving") {
		t.Errorf("stderr = %q: the runner did not get SIGTERM first", stderr.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type countingWriter struct{ n atomic.Int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n.Add(int64(len(p))); return len(p), nil }

// Tens of MB of stderr (and a 4 MiB line) must neither block the child nor grow our memory; the tail is kept
// and the tee sees every byte.
func TestHugeStderr(t *testing.T) {
	const mib = 48
	opts := fakeOptions(t)
	opts.Timeout = 60 * time.Second
	tee := &countingWriter{}
	opts.Stderr = tee

	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	w, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	out, err := w.Do(context.Background(), job("big", "hugestderr", "mib", mib))
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if out.Result == nil {
		t.Fatal("no result")
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	close(stop)
	wg.Wait()

	tail := w.tail.lines()
	if len(tail) != 40 {
		t.Fatalf("tail has %d lines, want 40", len(tail))
	}
	if got := tail[len(tail)-1]; got != "the last stderr line" {
		t.Errorf("last tail line = %q", got)
	}
	if got := tail[len(tail)-2]; got != "progress 100%" {
		t.Errorf("a carriage return must start the line over: got %q", got)
	}
	if got := tail[len(tail)-3]; len(got) > tailLineLen+len("…") || !strings.HasPrefix(got, "LLLL") {
		t.Errorf("the 4 MiB line must be cut to %d bytes, got %d", tailLineLen, len(got))
	}
	want := int64(mib<<20 + 4<<20 + 1 + len("progress 10%\rprogress 100%\n") + len("the last stderr line\n") + len(`fake: job big does "hugestderr"`+"\n"))
	if tee.n.Load() != want {
		t.Errorf("tee got %d bytes, want %d", tee.n.Load(), want)
	}
	if grew := int64(peak.Load()) - int64(before.HeapAlloc); grew > 24<<20 {
		t.Errorf("heap grew by %d MiB while reading %d MiB of stderr: the tail must not keep the stream", grew>>20, mib)
	}
}

func TestRunMissingEnd(t *testing.T) {
	_, err := Run(context.Background(), fakeOptions(t), job("j6", "noend"))
	var me *MissingEndError
	if !errors.As(err, &me) || me.Job != "j6" {
		t.Fatalf("err = %T %v, want *MissingEndError for j6", err, err)
	}
	if !strings.Contains(err.Error(), "leaving early") || strings.Contains(err.Error(), "\n") {
		t.Errorf("Error() = %q, want one line with the last stderr line", err.Error())
	}
}

func TestRunJobError(t *testing.T) {
	out, err := Run(context.Background(), fakeOptions(t), job("j7", "joberror"))
	var je *JobError
	if !errors.As(err, &je) {
		t.Fatalf("err = %T %v, want *JobError", err, err)
	}
	if je.Kind != "oom" || je.Job != "j7" || !strings.HasPrefix(je.Message, "CUDA out of memory.") {
		t.Errorf("JobError = %+v", je)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("Error() = %q, want one line", err.Error())
	}
	if out == nil || out.Result != nil || out.PID == 0 {
		t.Errorf("outcome = %+v, want the outcome without a result", out)
	}
}

func TestWarmWorkerRunsJobsInSequence(t *testing.T) {
	w, err := Start(fakeOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	pid := w.PID()
	for i, do := range []string{"clean", "joberror", "clean", "otherjob", "clean"} {
		id := "w" + string(rune('a'+i))
		out, err := w.Do(context.Background(), job(id, do, "i", i))
		switch do {
		case "joberror":
			var je *JobError
			if !errors.As(err, &je) {
				t.Fatalf("job %s: err = %v, want JobError", id, err)
			}
			if !w.Alive() {
				t.Fatal("a job error must leave the worker alive")
			}
		case "otherjob":
			if err != nil || string(out.Result) != `{"right":true}` {
				t.Fatalf("job %s: %v %s, want only its own result", id, err, out.Result)
			}
		default:
			if err != nil {
				t.Fatalf("job %s: %v", id, err)
			}
			var res struct{ Echo map[string]any }
			if err := out.DecodeResult(&res); err != nil || res.Echo["i"] != float64(i) {
				t.Fatalf("job %s: result %s (%v)", id, out.Result, err)
			}
		}
		if out.PID != pid {
			t.Errorf("job %s ran in pid %d, want the warm worker %d", id, out.PID, pid)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitGone(t, "worker", pid, 0)
	if _, err := w.Do(context.Background(), job("late", "clean")); !errors.Is(err, ErrWorkerDead) {
		t.Errorf("Do after Close: %v, want ErrWorkerDead", err)
	}
}

func TestWorkerDeadAfterTimeout(t *testing.T) {
	opts := fakeOptions(t)
	opts.Timeout = 100 * time.Millisecond
	w, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Do(context.Background(), job("a", "hang")); err == nil {
		t.Fatal("want a timeout")
	}
	if w.Alive() {
		t.Error("worker alive after a timeout")
	}
	if _, err := w.Do(context.Background(), job("b", "clean")); !errors.Is(err, ErrWorkerDead) {
		t.Errorf("err = %v, want ErrWorkerDead", err)
	}
}

func TestKillFromAnotherGoroutine(t *testing.T) {
	w, err := Start(fakeOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(200*time.Millisecond, w.Kill)
	t0 := time.Now()
	_, err = w.Do(context.Background(), job("a", "hang"))
	if err == nil {
		t.Fatal("Do succeeded after Kill")
	}
	if time.Since(t0) > 5*time.Second {
		t.Errorf("Do returned %s after Kill", time.Since(t0))
	}
	waitGone(t, "runner", w.PID(), 0)
	if err := w.Close(); err != nil {
		t.Errorf("Close after Kill: %v", err)
	}
}

func TestCloseReportsNonZeroExit(t *testing.T) {
	w, err := Start(fakeOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Do(context.Background(), job("a", "exit2ateof")); err != nil {
		t.Fatal(err)
	}
	var ee *ExitError
	if err := w.Close(); !errors.As(err, &ee) || ee.Code != 2 {
		t.Fatalf("Close = %v, want ExitError status 2", err)
	}
}

func TestRunIgnoresExitStatusAfterEnd(t *testing.T) {
	if _, err := Run(context.Background(), fakeOptions(t), job("a", "exit2ateof")); err != nil {
		t.Fatalf("Run = %v: once the job ended, the runner's exit status must not fail it", err)
	}
}

func TestCancelledBeforeSending(t *testing.T) {
	w, err := Start(fakeOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := w.Do(ctx, job("a", "clean")); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if !w.Alive() {
		t.Fatal("nothing was sent; the worker must stay usable")
	}
	if _, err := w.Do(context.Background(), job("b", "clean")); err != nil {
		t.Fatalf("next job: %v", err)
	}
}

func TestStartMissingInterpreter(t *testing.T) {
	_, err := Start(Options{Python: "/nonexistent/python3"})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/python3") {
		t.Fatalf("err = %v, want it to name the interpreter", err)
	}
	if _, err := Start(Options{}); err == nil {
		t.Fatal("Start without an interpreter must fail")
	}
}

func TestRunnerStopsReadingStdin(t *testing.T) {
	// A runner that has exited cannot take the next job: Do must report how it ended, not hang on the write.
	w, err := Start(fakeOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Do(context.Background(), job("a", "noend")); err == nil {
		t.Fatal("want MissingEndError")
	}
	if _, err := w.Do(context.Background(), job("b", "clean")); !errors.Is(err, ErrWorkerDead) {
		t.Fatalf("err = %v, want ErrWorkerDead", err)
	}
}
