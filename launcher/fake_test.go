package launcher

// A fake runner with no Python: the test binary re-executes itself with MDN_FAKE_RUNNER set (the os/exec
// helper-process pattern) and then speaks the protocol on stdin/stdout. What each job does is chosen by the
// job's params["do"], so one warm fake can run a sequence of different behaviours.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

const fakeEnv = "MDN_FAKE_RUNNER"

func TestMain(m *testing.M) {
	switch os.Getenv(fakeEnv) {
	case "":
		os.Exit(m.Run())
	case "runner":
		os.Exit(fakeRunner())
	case "sleeper": // a grandchild that ignores SIGTERM
		signal.Ignore(syscall.SIGTERM)
		time.Sleep(time.Hour)
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", fakeEnv, os.Getenv(fakeEnv))
		os.Exit(99)
	}
}

// fakeOptions runs this test binary as the runner.
func fakeOptions(t *testing.T) Options {
	t.Helper()
	return Options{
		Python: os.Args[0],
		Args:   []string{"-fake-runner"}, // never parsed: TestMain answers before flag parsing
		// A -race build sleeps 1 s at exit by default (atexit_sleep_ms); the fake must exit like a real runner.
		Env:   []string{fakeEnv + "=runner", "GORACE=atexit_sleep_ms=0"},
		Grace: 300 * time.Millisecond,
	}
}

func emit(ev map[string]any) {
	if _, ok := ev["v"]; !ok {
		ev["v"] = ProtocolVersion
	}
	ev["t"] = float64(time.Now().UnixNano()) / 1e9
	b, _ := json.Marshal(ev)
	os.Stdout.Write(append(b, '\n'))
}

func startSleeper() int {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fakeEnv+"=sleeper", "GORACE=atexit_sleep_ms=0")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr // holds the pipes open, as a real grandchild would
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "fake: start sleeper:", err)
		os.Exit(98)
	}
	return cmd.Process.Pid
}

func fakeRunner() int {
	exitCode := 0
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	for in.Scan() {
		var spec Spec
		if err := json.Unmarshal(in.Bytes(), &spec); err != nil {
			emit(map[string]any{"event": "error", "job": "", "kind": "protocol", "message": "bad job spec line: " + err.Error()})
			exitCode = 2
			continue
		}
		id := spec.ID
		do, _ := spec.Params["do"].(string)
		emit(map[string]any{"event": "start", "job": id, "kind": spec.Kind, "pid": os.Getpid(), "host": "fakehost"})
		fmt.Fprintf(os.Stderr, "fake: job %s does %q\n", id, do)
		switch do {
		case "", "clean":
			emit(map[string]any{"event": "progress", "job": id, "done": 1, "total": 2, "message": "half"})
			emit(map[string]any{"event": "progress", "job": id, "done": 2, "total": 2, "message": "all"})
			emit(map[string]any{"event": "metric", "job": id, "data": map[string]any{"step": 1, "loss": "nan"}})
			emit(map[string]any{"event": "result", "job": id, "data": map[string]any{"echo": spec.Params, "pid": os.Getpid()}})
			emit(map[string]any{"event": "end", "job": id, "status": "ok", "elapsed": 0.01})
		case "joberror":
			emit(map[string]any{"event": "error", "job": id, "kind": "oom", "message": "CUDA out of memory.\nTried to allocate 2 GiB"})
			emit(map[string]any{"event": "end", "job": id, "status": "error", "elapsed": 0.01})
		case "crash":
			fmt.Fprintln(os.Stderr, "Traceback (most recent call last):")
			fmt.Fprintln(os.Stderr, `  File "job.py", line 1, in run`)
			fmt.Fprintln(os.Stderr, "RuntimeError: boom")
			return 3
		case "signal":
			fmt.Fprintln(os.Stderr, "about to be OOM-killed")
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL) // as the kernel's OOM killer would
			time.Sleep(time.Hour)
		case "malformed":
			os.Stdout.WriteString("Loading checkpoint shards: 100%\n")
			time.Sleep(time.Hour)
		case "badversion":
			emit(map[string]any{"v": 99, "event": "result", "job": id, "data": map[string]any{}})
			time.Sleep(time.Hour)
		case "badend":
			emit(map[string]any{"event": "end", "job": id, "status": "maybe"})
			time.Sleep(time.Hour)
		case "longline":
			emit(map[string]any{"event": "result", "job": id, "data": map[string]any{"blob": strings.Repeat("x", 64<<10)}})
			time.Sleep(time.Hour)
		case "hang":
			time.Sleep(time.Hour)
		case "orphan": // a grandchild and a child that both ignore SIGTERM; Ctrl-C must still leave nothing behind
			signal.Ignore(syscall.SIGTERM)
			pid := startSleeper()
			emit(map[string]any{"event": "metric", "job": id, "data": map[string]any{"grandchild": pid}})
			time.Sleep(time.Hour)
		case "exitheld": // exits non-zero while a grandchild keeps stdout and stderr open
			pid := startSleeper()
			emit(map[string]any{"event": "metric", "job": id, "data": map[string]any{"grandchild": pid}})
			fmt.Fprintln(os.Stderr, "ValueError: exiting while a grandchild holds the pipes")
			return 1
		case "termslow": // handles SIGTERM, tidies up briefly and exits 0
			c := make(chan os.Signal, 1)
			signal.Notify(c, syscall.SIGTERM)
			emit(map[string]any{"event": "progress", "job": id, "done": 0, "total": 1})
			<-c
			fmt.Fprintln(os.Stderr, "fake: got SIGTERM, saving")
			time.Sleep(50 * time.Millisecond)
			return 0
		case "hugestderr":
			mib := int(spec.Params["mib"].(float64))
			line := strings.Repeat("e", 1023) + "\n"
			bw := bufio.NewWriterSize(os.Stderr, 1<<20)
			for i := 0; i < mib*1024; i++ {
				bw.WriteString(line)
			}
			bw.WriteString(strings.Repeat("L", 4<<20) + "\n") // one 4 MiB line
			bw.WriteString("progress 10%\rprogress 100%\n")
			bw.WriteString("the last stderr line\n")
			bw.Flush()
			emit(map[string]any{"event": "result", "job": id, "data": map[string]any{"ok": true}})
			emit(map[string]any{"event": "end", "job": id, "status": "ok", "elapsed": 1})
		case "noend":
			emit(map[string]any{"event": "result", "job": id, "data": map[string]any{}})
			fmt.Fprintln(os.Stderr, "leaving early")
			return 0
		case "exit2ateof":
			exitCode = 2
			emit(map[string]any{"event": "result", "job": id, "data": map[string]any{}})
			emit(map[string]any{"event": "end", "job": id, "status": "ok", "elapsed": 0})
		case "otherjob": // an event of another job is ignored
			emit(map[string]any{"event": "result", "job": "someone-else", "data": map[string]any{"wrong": true}})
			emit(map[string]any{"event": "result", "job": id, "data": map[string]any{"right": true}})
			emit(map[string]any{"event": "end", "job": id, "status": "ok", "elapsed": 0})
		default:
			emit(map[string]any{"event": "error", "job": id, "kind": "user", "message": "fake: unknown do " + do})
			emit(map[string]any{"event": "end", "job": id, "status": "error", "elapsed": 0})
		}
	}
	return exitCode
}
