package launcher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrWorkerDead is returned by Worker.Do after the worker was closed, killed, timed out or crashed.
var ErrWorkerDead = errors.New("launcher: worker is no longer running; start a new one")

// Every error type below prints as ONE line (the last non-empty stderr line is quoted where it helps);
// the full stderr tail is available through Tail() for callers that want to show more.

// Tailer is implemented by errors that carry the last lines of the runner's stderr.
type Tailer interface {
	Tail() []string
}

// ExitError: the child exited non-zero (or was killed by a signal it did not get from us) before the job ended.
type ExitError struct {
	Job        string // the job that was running ("" when none)
	Code       int    // exit status; -1 when killed by a signal
	Signal     string // the signal name, if any
	StderrTail []string
}

func (e *ExitError) Error() string {
	how := fmt.Sprintf("exited with status %d", e.Code)
	if e.Signal != "" {
		how = "was killed by " + e.Signal
	}
	return fmt.Sprintf("%spython runner %s%s", jobPrefix(e.Job), how, lastLineSuffix(e.StderrTail))
}

func (e *ExitError) Tail() []string { return e.StderrTail }

// ProtocolError: a line on stdout that is not a protocol event (or an event that breaks the protocol).
type ProtocolError struct {
	Job        string
	Line       string // the offending line, truncated
	Err        error
	StderrTail []string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("%smalformed event line %q: %v", jobPrefix(e.Job), e.Line, e.Err)
}

func (e *ProtocolError) Unwrap() error  { return e.Err }
func (e *ProtocolError) Tail() []string { return e.StderrTail }

// MissingEndError: the runner's stdout closed (or the runner exited cleanly) before the job's end event.
type MissingEndError struct {
	Job        string
	StderrTail []string
}

func (e *MissingEndError) Error() string {
	return fmt.Sprintf("%spython runner stopped without an end event%s", jobPrefix(e.Job), lastLineSuffix(e.StderrTail))
}

func (e *MissingEndError) Tail() []string { return e.StderrTail }

// TimeoutError: the job ran past its timeout and the runner's process group was killed.
type TimeoutError struct {
	Job        string
	After      time.Duration
	StderrTail []string
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("%stimed out after %s; the python runner was killed", jobPrefix(e.Job), e.After)
}

func (e *TimeoutError) Tail() []string { return e.StderrTail }

// JobError: the job reported an error event (kind as in docs/protocol.md). The runner is still usable.
type JobError struct {
	Job     string
	Kind    string
	Message string
}

func (e *JobError) Error() string {
	return fmt.Sprintf("%sfailed (%s): %s", jobPrefix(e.Job), e.Kind, oneLine(e.Message))
}

func jobPrefix(job string) string {
	if job == "" {
		return ""
	}
	return "job " + job + ": "
}

// lastLineSuffix quotes the last non-empty stderr line, usually the exception, so one line says what happened.
func lastLineSuffix(tail []string) string {
	for i := len(tail) - 1; i >= 0; i-- {
		if s := strings.TrimSpace(tail[i]); s != "" {
			return fmt.Sprintf(" (last stderr line: %s)", truncate(s, 300))
		}
	}
	return ""
}

// oneLine joins a multi-line message so that an error always prints as one line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	f := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range f {
		f[i] = strings.TrimSpace(f[i])
	}
	return strings.Join(f, " | ")
}

// KilledByStopSignal: the runner was killed by SIGTERM, SIGINT or SIGHUP from outside, the signals that stop a
// whole job (scancel, Ctrl-C): often an interruption of the caller too, a moment later, not a failure of the job.
func KilledByStopSignal(err error) bool {
	var ee *ExitError
	if !errors.As(err, &ee) {
		return false
	}
	switch ee.Signal {
	case "terminated", "interrupt", "hangup":
		return true
	}
	return false
}

// CancelledWithin waits up to grace (default 2 s) for ctx to be cancelled and reports whether it was.
func CancelledWithin(ctx context.Context, grace time.Duration) bool {
	if grace <= 0 {
		grace = 2 * time.Second
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return true
	case <-t.C:
		return false
	}
}
