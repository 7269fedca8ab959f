package launcher

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Options say how to start the runner.
type Options struct {
	Python     string        // interpreter; see FindPython
	Args       []string      // arguments after the interpreter; default: -m mdn.runner
	Dir        string        // working directory of the child
	Env        []string      // extra KEY=VALUE entries on top of os.Environ()
	Timeout    time.Duration // per job; 0 = none
	Grace      time.Duration // SIGTERM → SIGKILL delay; default 5s
	TailLines  int           // stderr lines kept for error reports; default 40
	Stderr     io.Writer     // optional tee of the child's stderr (e.g. a log file)
	OnEvent    func(Event)   // optional callback for every event
	MaxLineLen int           // longest accepted event line; default 16 MiB
}

func (o *Options) defaults() {
	if o.Grace == 0 {
		o.Grace = 5 * time.Second
	}
	if o.TailLines == 0 {
		o.TailLines = 40
	}
	if o.MaxLineLen == 0 {
		o.MaxLineLen = 16 << 20
	}
	if len(o.Args) == 0 {
		o.Args = []string{"-m", "mdn.runner"}
	}
}

type lineOrErr struct {
	line []byte
	err  error
}

// Worker is one runner child that runs jobs one after another (a warm worker).
type Worker struct {
	opts   Options
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan lineOrErr
	tail   *tailBuffer
	errDone chan struct{}
	waitOnce sync.Once
	waitErr  error
	mu     sync.Mutex
	dead   bool
}

// Start launches the runner child in its own process group.
func Start(opts Options) (*Worker, error) {
	opts.defaults()
	if opts.Python == "" {
		return nil, errors.New("launcher: no Python interpreter given")
	}
	cmd := exec.Command(opts.Python, opts.Args...)
	cmd.Dir = opts.Dir
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1", "PYTHONSAFEPATH=1", fmt.Sprintf("MDN_PROTOCOL=%d", ProtocolVersion))
	cmd.Env = append(cmd.Env, opts.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("launcher: stdin pipe: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("launcher: stdout pipe: %w", err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, fmt.Errorf("launcher: stderr pipe: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("launcher: start %s: %w", opts.Python, err)
	}
	w := &Worker{opts: opts, cmd: cmd, stdin: stdin, lines: make(chan lineOrErr, 64),
		tail: newTailBuffer(opts.TailLines, 2048), errDone: make(chan struct{})}
	go w.readStdout(stdout)
	go func() {
		defer close(w.errDone)
		w.tail.consume(stderr, opts.Stderr)
	}()
	return w, nil
}

func (w *Worker) readStdout(r io.Reader) {
	br := bufio.NewReaderSize(r, 64<<10)
	defer close(w.lines)
	for {
		line, err := readLine(br, w.opts.MaxLineLen)
		if len(line) > 0 {
			w.lines <- lineOrErr{line: line}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				w.lines <- lineOrErr{err: err}
			}
			// Drain so a child writing more never blocks on a full pipe.
			_, _ = io.Copy(io.Discard, br)
			return
		}
	}
}

// readLine returns one line without its newline; lines longer than max are an error.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var buf []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		buf = append(buf, chunk...)
		if len(buf) > max {
			return nil, &ProtocolError{Line: truncate(string(buf), 200), Err: fmt.Errorf("event line longer than %d bytes", max)}
		}
		if err != nil {
			return buf, err
		}
		if !isPrefix {
			return buf, nil
		}
	}
}

// Do sends one job and blocks until its end event, a failure, the timeout, or ctx cancellation.
// After a timeout, cancellation, crash or protocol error the worker is dead; start a new one.
func (w *Worker) Do(ctx context.Context, spec Spec) (*Outcome, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dead {
		return nil, errors.New("launcher: worker is no longer running")
	}
	if spec.V == 0 {
		spec.V = ProtocolVersion
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("launcher: encode job %s: %w", spec.ID, err)
	}
	start := time.Now()
	if _, err := w.stdin.Write(append(b, '\n')); err != nil {
		w.kill()
		return nil, w.exitError(fmt.Errorf("launcher: send job %s: %w", spec.ID, err))
	}
	var timeout <-chan time.Time
	if w.opts.Timeout > 0 {
		t := time.NewTimer(w.opts.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	out := &Outcome{JobID: spec.ID}
	var jobErr *JobError
	for {
		select {
		case <-ctx.Done():
			w.kill()
			return nil, ctx.Err()
		case <-timeout:
			w.kill()
			return nil, &TimeoutError{Job: spec.ID, After: w.opts.Timeout, StderrTail: w.tail.lines()}
		case le, ok := <-w.lines:
			if !ok {
				return nil, w.exitError(&MissingEndError{Job: spec.ID})
			}
			if le.err != nil {
				w.kill()
				return nil, le.err
			}
			ev, err := ParseEvent(le.line)
			if err != nil {
				w.kill()
				return nil, err
			}
			if w.opts.OnEvent != nil {
				w.opts.OnEvent(ev)
			}
			if ev.Job != spec.ID && !(ev.Event == "error" && ev.Job == "") {
				continue // an event of another job cannot happen in order; ignore rather than guess
			}
			switch ev.Event {
			case "start":
				out.Host, out.PID = ev.Host, ev.PID
			case "metric":
				out.Metrics = append(out.Metrics, ev.Data)
			case "result":
				out.Result = ev.Data
			case "error":
				jobErr = &JobError{Job: spec.ID, Kind: ev.Kind, Message: ev.Message}
			case "end":
				out.Elapsed = time.Since(start)
				if ev.Status != "ok" {
					if jobErr == nil {
						jobErr = &JobError{Job: spec.ID, Kind: "internal", Message: "job ended with status " + ev.Status}
					}
					return out, jobErr
				}
				return out, nil
			}
		}
	}
}

// Close ends the worker: stdin is closed so the runner exits; after the grace period it is killed.
func (w *Worker) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.stdin.Close()
	done := make(chan struct{})
	go func() { w.wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.opts.Grace):
		w.killGroup(syscall.SIGKILL)
		<-done
	}
	w.dead = true
	return nil
}

// kill sends SIGTERM to the whole process group, then SIGKILL after the grace period.
func (w *Worker) kill() {
	w.dead = true
	_ = w.stdin.Close()
	w.killGroup(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { w.wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.opts.Grace):
	}
	// Always finish with SIGKILL: grandchildren that ignored SIGTERM must not outlive us.
	w.killGroup(syscall.SIGKILL)
	<-done
}

func (w *Worker) killGroup(sig syscall.Signal) {
	if w.cmd.Process != nil {
		_ = syscall.Kill(-w.cmd.Process.Pid, sig)
	}
}

// wait reaps the child after stderr is drained (or a short grace if a grandchild holds it open).
func (w *Worker) wait() error {
	w.waitOnce.Do(func() {
		select {
		case <-w.errDone:
		case <-time.After(2 * time.Second):
			w.killGroup(syscall.SIGKILL)
			<-w.errDone
		}
		w.waitErr = w.cmd.Wait()
	})
	return w.waitErr
}

// exitError turns a closed stream into the most specific error: ExitError if the child failed.
func (w *Worker) exitError(fallback error) error {
	w.dead = true
	err := w.wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		x := &ExitError{Code: ee.ExitCode(), StderrTail: w.tail.lines()}
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			x.Code, x.Signal = -1, ws.Signal().String()
		}
		return x
	}
	var me *MissingEndError
	if errors.As(fallback, &me) {
		me.StderrTail = w.tail.lines()
	}
	return fallback
}

// Run starts a runner, does one job and closes it (one-shot mode).
func Run(ctx context.Context, opts Options, spec Spec) (*Outcome, error) {
	w, err := Start(opts)
	if err != nil {
		return nil, err
	}
	out, err := w.Do(ctx, spec)
	if err != nil {
		var je *JobError
		if !errors.As(err, &je) {
			return out, err
		}
	}
	_ = w.Close()
	return out, err
}
