package launcher

import (
	"fmt"
	"strings"
	"time"
)

// ExitError: the child exited non-zero (or was killed by a signal) before the job ended.
type ExitError struct {
	Code       int    // -1 when killed by a signal
	Signal     string // the signal name, if any
	StderrTail []string
}

func (e *ExitError) Error() string {
	how := fmt.Sprintf("exit status %d", e.Code)
	if e.Signal != "" {
		how = "killed by " + e.Signal
	}
	return fmt.Sprintf("python runner %s%s", how, tailSuffix(e.StderrTail))
}

// ProtocolError: a line on stdout that is not a protocol event.
type ProtocolError struct {
	Line string
	Err  error
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("malformed event line %q: %v", e.Line, e.Err)
}

func (e *ProtocolError) Unwrap() error { return e.Err }

// MissingEndError: stdout closed before the job's end event.
type MissingEndError struct {
	Job        string
	StderrTail []string
}

func (e *MissingEndError) Error() string {
	return fmt.Sprintf("job %s: runner stopped without an end event%s", e.Job, tailSuffix(e.StderrTail))
}

// TimeoutError: the job ran past its timeout and its process group was killed.
type TimeoutError struct {
	Job        string
	After      time.Duration
	StderrTail []string
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("job %s: timed out after %s%s", e.Job, e.After, tailSuffix(e.StderrTail))
}

// JobError: the job reported an error event (kind as in docs/protocol.md).
type JobError struct {
	Job     string
	Kind    string
	Message string
}

func (e *JobError) Error() string {
	return fmt.Sprintf("job %s failed (%s): %s", e.Job, e.Kind, e.Message)
}

func tailSuffix(tail []string) string {
	if len(tail) == 0 {
		return ""
	}
	return "\n--- last stderr lines ---\n" + strings.Join(tail, "\n")
}
