// Package launcher runs Python jobs (python -m mdn.runner) and decodes their protocol events
// (docs/protocol.md). It knows nothing of sweeps, TOML or models: it runs job specs.
package launcher

import (
	"encoding/json"
	"fmt"
	"time"
)

// ProtocolVersion is the version of docs/protocol.md this package speaks.
const ProtocolVersion = 1

// Spec is one job for the runner.
type Spec struct {
	V      int            `json:"v"`
	ID     string         `json:"id"`
	Kind   string         `json:"kind"`
	Params map[string]any `json:"params"`
}

// Event is one protocol event from the runner.
type Event struct {
	V       int             `json:"v"`
	Event   string          `json:"event"`
	Job     string          `json:"job"`
	T       float64         `json:"t"`
	Kind    string          `json:"kind,omitempty"`
	PID     int             `json:"pid,omitempty"`
	Host    string          `json:"host,omitempty"`
	Done    int             `json:"done,omitempty"`
	Total   int             `json:"total,omitempty"`
	Message string          `json:"message,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	Status  string          `json:"status,omitempty"`
	Elapsed float64         `json:"elapsed,omitempty"`
}

// Outcome is what one finished job produced.
type Outcome struct {
	JobID   string
	Result  json.RawMessage // the result event's data (nil if the job failed)
	Metrics []json.RawMessage
	Elapsed time.Duration // wall time seen by Go, spawn included for one-shot runs
	Host    string
	PID     int
}

// DecodeResult unmarshals the job's result into v.
func (o *Outcome) DecodeResult(v any) error {
	if o == nil || o.Result == nil {
		return fmt.Errorf("job has no result")
	}
	return json.Unmarshal(o.Result, v)
}

// ParseEvent decodes one stdout line; anything that is not a versioned protocol event is a ProtocolError.
func ParseEvent(line []byte) (Event, error) {
	var ev Event
	if err := json.Unmarshal(line, &ev); err != nil {
		return ev, &ProtocolError{Line: truncate(string(line), 400), Err: fmt.Errorf("not JSON: %w", err)}
	}
	if ev.V != ProtocolVersion {
		return ev, &ProtocolError{Line: truncate(string(line), 400), Err: fmt.Errorf("protocol version %d, want %d", ev.V, ProtocolVersion)}
	}
	bad := func(format string, args ...any) (Event, error) {
		return ev, &ProtocolError{Job: ev.Job, Line: truncate(string(line), 400), Err: fmt.Errorf(format, args...)}
	}
	switch ev.Event {
	case "":
		return bad("event without a name")
	case "end":
		if ev.Status != "ok" && ev.Status != "error" {
			return bad("end event with status %q, want \"ok\" or \"error\"", ev.Status)
		}
	case "error":
		if ev.Kind == "" {
			return bad("error event without a kind")
		}
	}
	// Unknown event kinds are passed on and ignored by consumers (forward compatible).
	return ev, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return validPrefix(s[:n]) + "…"
}
