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
	"sync/atomic"
	"syscall"
	"time"
)

// Options say how to start the runner.
type Options struct {
	Python     string        // interpreter; see FindPython
	Args       []string      // arguments after the interpreter; default: -m mdn.runner
	Dir        string        // working directory of the child ("" = ours)
	Env        []string      // extra KEY=VALUE entries on top of os.Environ() (later entries win)
	Timeout    time.Duration // per job; 0 = none
	Grace      time.Duration // SIGTERM → SIGKILL delay; default 5s
	TailLines  int           // stderr lines kept for error reports; default 40
	Stderr     io.Writer     // optional tee of the child's raw stderr (e.g. a log file); a failing tee is dropped
	OnEvent    func(Event)   // optional callback for every event, called from the goroutine running Do
	MaxLineLen int           // longest accepted event line; default 16 MiB
}

func (o *Options) defaults() {
	if o.Grace <= 0 {
		o.Grace = 5 * time.Second
	}
	if o.TailLines <= 0 {
		o.TailLines = 40
	}
	if o.MaxLineLen <= 0 {
		o.MaxLineLen = 16 << 20
	}
	if len(o.Args) == 0 {
		o.Args = []string{"-m", "mdn.runner"}
	}
}

const (
	tailLineLen = 2048             // bytes kept of each stderr line
	drainDelay  = 2 * time.Second  // after the child exits mid-job: how long its last stdout lines may take
	streamDelay = 1 * time.Second  // after the group is dead: how long a pipe held by an escaped process may stay open
	reapDelay   = 30 * time.Second // after SIGKILL: how long to wait for the kernel (a process in D state) before giving up
	pollEvery   = 25 * time.Millisecond
)

type lineOrErr struct {
	line []byte
	err  error
}

// Worker is one runner child that runs jobs one after another (a warm worker). Do and Close are serialised;
// Kill may be called from any goroutine at any time.
type Worker struct {
	opts    Options
	cmd     *exec.Cmd
	pgid    int
	started time.Time

	stdin  *os.File // write end of the child's stdin
	stdout *os.File // read end of the child's stdout (events)
	stderr *os.File // read end of the child's stderr (logs)

	lines   chan lineOrErr // stdout lines, in order; closed at EOF
	tail    *tailBuffer
	outDone chan struct{} // the stdout reader returned
	errDone chan struct{} // the stderr reader returned
	exited  chan struct{} // the child was reaped; waitErr is set
	waitErr error
	quit    chan struct{} // closed at teardown: the stdout reader stops handing lines over

	mu         sync.Mutex // one Do or Close at a time
	dead       atomic.Bool
	killedByUs atomic.Bool // we signalled the child before it exited on its own
	downOnce   sync.Once
}

// Start launches the runner child in its own process group. Its stdin, stdout and stderr are pipes owned by
// the worker; stdout and stderr are read continuously, so the child never blocks on a full pipe.
func Start(opts Options) (*Worker, error) {
	opts.defaults()
	if opts.Python == "" {
		return nil, errors.New("launcher: no Python interpreter given")
	}
	var pipes [6]*os.File // inR, inW, outR, outW, errR, errW
	closeAll := func() {
		for _, f := range pipes {
			if f != nil {
				_ = f.Close()
			}
		}
	}
	for i := 0; i < 6; i += 2 {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("launcher: pipe: %w", err)
		}
		pipes[i], pipes[i+1] = r, w
	}
	inR, inW, outR, outW, errR, errW := pipes[0], pipes[1], pipes[2], pipes[3], pipes[4], pipes[5]

	cmd := exec.Command(opts.Python, opts.Args...)
	cmd.Dir = opts.Dir
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1", "PYTHONSAFEPATH=1", fmt.Sprintf("MDN_PROTOCOL=%d", ProtocolVersion))
	cmd.Env = append(cmd.Env, opts.Env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW // *os.File: no copying goroutines inside os/exec
	// Own process group: Ctrl-C at the terminal reaches only us, and we can signal the runner with all its
	// children at once. Pdeathsig: if mdnctl dies without cleaning up, the kernel kills the runner.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err := cmd.Start()
	// The child holds its ends now; ours must close so EOF reaches the readers when the child is gone.
	_ = inR.Close()
	_ = outW.Close()
	_ = errW.Close()
	if err != nil {
		_ = inW.Close()
		_ = outR.Close()
		_ = errR.Close()
		return nil, fmt.Errorf("launcher: start %s: %w", opts.Python, err)
	}
	w := &Worker{
		opts: opts, cmd: cmd, pgid: cmd.Process.Pid, started: time.Now(),
		stdin: inW, stdout: outR, stderr: errR,
		lines: make(chan lineOrErr, 64), tail: newTailBuffer(opts.TailLines, tailLineLen),
		outDone: make(chan struct{}), errDone: make(chan struct{}), exited: make(chan struct{}), quit: make(chan struct{}),
	}
	go w.readStdout()
	go func() {
		defer close(w.errDone)
		w.tail.consume(errR, opts.Stderr)
	}()
	go func() {
		w.waitErr = cmd.Wait()
		close(w.exited)
	}()
	return w, nil
}

// PID is the runner's process id (also its process group id).
func (w *Worker) PID() int { return w.pgid }

// Alive reports whether the worker can take another job.
func (w *Worker) Alive() bool { return !w.dead.Load() }

func (w *Worker) readStdout() {
	defer close(w.outDone)
	defer close(w.lines)
	br := bufio.NewReaderSize(w.stdout, 64<<10)
	for {
		line, err := readLine(br, w.opts.MaxLineLen)
		if err == nil || len(line) > 0 {
			if !w.send(lineOrErr{line: line}) {
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrClosed) {
				w.send(lineOrErr{err: err})
			}
			break
		}
	}
	// Keep draining: a child writing more must never block on a full pipe.
	_, _ = io.Copy(io.Discard, br)
}

func (w *Worker) send(le lineOrErr) bool {
	select {
	case w.lines <- le:
		return true
	case <-w.quit:
		return false
	}
}

// readLine returns one line without its newline; a line longer than max is a ProtocolError.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var buf []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		if len(buf)+len(chunk) > max {
			return nil, &ProtocolError{Line: truncate(string(append(buf, chunk...)), 200), Err: fmt.Errorf("event line longer than %d bytes", max)}
		}
		buf = append(buf, chunk...)
		if err != nil {
			return buf, err
		}
		if !isPrefix {
			return buf, nil
		}
	}
}

// Do sends one job and blocks until its end event, a failure, the timeout, or ctx cancellation.
// A *JobError leaves the worker usable; after any other error the worker is dead (start a new one).
func (w *Worker) Do(ctx context.Context, spec Spec) (*Outcome, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dead.Load() {
		return nil, ErrWorkerDead
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("job %s: %w", spec.ID, err)
	}
	if spec.V == 0 {
		spec.V = ProtocolVersion
	}
	if spec.Params == nil {
		spec.Params = map[string]any{}
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("launcher: encode job %s: %w", spec.ID, err)
	}
	start := time.Now()
	// Write in the background: a child that does not read its stdin must not make us deaf to ctx and timeout.
	sent := make(chan error, 1)
	go func() {
		_, err := w.stdin.Write(append(b, '\n'))
		sent <- err
	}()
	var timeout <-chan time.Time
	if w.opts.Timeout > 0 {
		t := time.NewTimer(w.opts.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	exited := w.exited
	var drain <-chan time.Time
	out := &Outcome{JobID: spec.ID}
	var jobErr *JobError
	for {
		select {
		case err := <-sent:
			sent = nil
			if err != nil { // the runner is gone or closed its stdin
				return nil, w.failed(spec.ID)
			}
		case <-ctx.Done():
			w.teardown()
			return nil, fmt.Errorf("job %s: %w", spec.ID, ctx.Err())
		case <-timeout:
			w.teardown()
			return nil, &TimeoutError{Job: spec.ID, After: w.opts.Timeout, StderrTail: w.tail.lines()}
		case <-exited:
			// The runner exited mid-job. Its last lines are still in the pipe unless something it started
			// holds stdout open; give the reader a moment either way.
			exited = nil
			drain = time.After(drainDelay)
		case <-drain:
			return nil, w.failed(spec.ID)
		case le, ok := <-w.lines:
			if !ok {
				return nil, w.failed(spec.ID)
			}
			if le.err != nil {
				w.teardown()
				return nil, w.withContext(le.err, spec.ID)
			}
			ev, err := ParseEvent(le.line)
			if err != nil {
				w.teardown()
				return nil, w.withContext(err, spec.ID)
			}
			if w.opts.OnEvent != nil {
				w.opts.OnEvent(ev)
			}
			if ev.Job == "" && ev.Event == "error" {
				// The runner could not read our spec line at all; it goes on with the next line.
				return nil, &JobError{Job: spec.ID, Kind: ev.Kind, Message: ev.Message}
			}
			if ev.Job != spec.ID {
				continue // events of another job cannot happen in order; ignore rather than guess
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
				if ev.Status == "error" && jobErr == nil {
					jobErr = &JobError{Job: spec.ID, Kind: "internal", Message: "job ended with status error but sent no error event"}
				}
				if jobErr != nil {
					out.Result = nil
					return out, jobErr
				}
				return out, nil
			}
		}
	}
}

// withContext adds the job and the stderr tail to a protocol error.
func (w *Worker) withContext(err error, job string) error {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		if pe.Job == "" {
			pe.Job = job
		}
		pe.StderrTail = w.tail.lines()
	}
	return err
}

// failed is called when the event stream ended (or the runner exited) mid-job: it tears the runner down and
// says why, most specific first: *ExitError if the runner failed on its own, else *MissingEndError.
func (w *Worker) failed(job string) error {
	select { // a crashing runner exits at once; let it, so its own exit status is reported
	case <-w.exited:
	case <-time.After(w.opts.Grace):
	}
	w.teardown()
	tail := w.tail.lines()
	if !w.killedByUs.Load() && isDone(w.exited) {
		var ee *exec.ExitError
		if errors.As(w.waitErr, &ee) {
			x := &ExitError{Job: job, Code: ee.ExitCode(), StderrTail: tail}
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				x.Code, x.Signal = -1, ws.Signal().String()
			}
			return x
		}
	}
	return &MissingEndError{Job: job, StderrTail: tail}
}

// Close ends the worker: stdin is closed so the runner finishes and exits; if it has not exited after the
// grace period it is killed. Anything left in its process group is killed too. Close returns an *ExitError
// when the runner exited non-zero on its own, and nil after a teardown (timeout, cancel, crash, Kill).
func (w *Worker) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dead.Load() {
		w.teardown() // a Kill in flight: wait for it
		return nil
	}
	_ = w.stdin.Close()
	onItsOwn := true
	select {
	case <-w.exited:
	case <-time.After(w.opts.Grace):
		onItsOwn = false
	}
	w.teardown()
	if !onItsOwn {
		return fmt.Errorf("launcher: python runner did not exit within %s of the end of its input; killed", w.opts.Grace)
	}
	var ee *exec.ExitError
	if errors.As(w.waitErr, &ee) {
		x := &ExitError{Code: ee.ExitCode(), StderrTail: w.tail.lines()}
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			x.Code, x.Signal = -1, ws.Signal().String()
		}
		return x
	}
	return nil
}

// Kill tears the worker down now: SIGTERM to the whole process group, SIGKILL after the grace period.
// Safe from any goroutine; a Do in progress returns an error.
func (w *Worker) Kill() { w.teardown() }

// teardown makes sure nothing of the runner survives: SIGTERM to the process group, then, once the group is
// empty or the grace period is over, SIGKILL to whatever is left (children that ignore SIGTERM included).
// It then waits for the child to be reaped and the pipes to close. It runs once; later calls wait for it.
func (w *Worker) teardown() {
	w.downOnce.Do(func() {
		w.dead.Store(true)
		_ = w.stdin.Close()
		select {
		case <-w.exited:
		default:
			w.killedByUs.Store(true)
		}
		if groupAlive(w.pgid) {
			signalGroup(w.pgid, syscall.SIGTERM)
			deadline := time.Now().Add(w.opts.Grace)
			for time.Now().Before(deadline) && (!isDone(w.exited) || groupAlive(w.pgid)) {
				time.Sleep(pollEvery)
			}
			if groupAlive(w.pgid) || !isDone(w.exited) {
				signalGroup(w.pgid, syscall.SIGKILL)
				// SIGKILL is delivered asynchronously: return only once the group is gone, so callers
				// (and tests) can rely on "no orphan survives" when this returns.
				for deadline := time.Now().Add(reapDelay); groupAlive(w.pgid) && time.Now().Before(deadline); {
					time.Sleep(pollEvery / 5)
				}
			}
		}
		select {
		case <-w.exited:
		case <-time.After(reapDelay): // stuck in the kernel; nothing more we can do
		}
		close(w.quit)
		// A process that left the group (setsid) may still hold our pipes: wait a moment, then cut them.
		for _, s := range []struct {
			done chan struct{}
			f    *os.File
		}{{w.outDone, w.stdout}, {w.errDone, w.stderr}} {
			select {
			case <-s.done:
			case <-time.After(streamDelay):
				_ = s.f.Close()
				<-s.done
			}
		}
		_ = w.stdout.Close()
		_ = w.stderr.Close()
	})
}

func isDone(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// Run starts a runner, does one job and closes it (one-shot mode). Outcome.Elapsed includes the start-up.
// Once the job has ended, how the runner exits afterwards does not change the job's outcome.
func Run(ctx context.Context, opts Options, spec Spec) (*Outcome, error) {
	w, err := Start(opts)
	if err != nil {
		return nil, err
	}
	out, err := w.Do(ctx, spec)
	if out != nil {
		out.Elapsed = time.Since(w.started)
	}
	if w.Alive() {
		_ = w.Close()
	} else {
		w.teardown()
	}
	return out, err
}
