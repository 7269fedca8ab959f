package slurm

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// TaskState is what Slurm (or the task's marker files) says about one array task, or about a job that is not
// an array (Task = -1).
type TaskState struct {
	JobID    string `json:"job_id"` // the array job id (or the job id)
	Task     int    `json:"task"`   // array task index; -1 for a plain job
	State    string `json:"state"`  // PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ... (Slurm's names)
	ExitCode *int   `json:"exit_code,omitempty"`
	Reason   string `json:"reason,omitempty"` // squeue's reason (JobArrayTaskLimit, Resources, ...) or ours
	Node     string `json:"node,omitempty"`
	Source   string `json:"source"` // "squeue", "marker" (the task's exit record) or "none"
}

// Active reports whether Slurm may still run (or is running) the task.
func (t TaskState) Active() bool { return isActive(t.State) }

func isActive(state string) bool {
	switch state {
	case "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
		"REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD":
		return true
	}
	return false
}

type taskKey struct {
	job  string
	task int
}

// QueryQueue asks squeue about the given jobs (array job ids or plain job ids), finished ones included for as long
// as squeue remembers them (MinJobAge). Tasks squeue does not know are simply absent. Pending array records
// ("5_[2-9%2]") are expanded to one entry per task. It uses `squeue --json` and falls back to `squeue -h -o`.
func QueryQueue(ctx context.Context, r Runner, jobIDs []string) (map[taskKey]TaskState, error) {
	out := map[taskKey]TaskState{}
	if len(jobIDs) == 0 {
		return out, nil
	}
	want := map[string]bool{}
	for _, id := range jobIDs {
		want[id] = true
	}
	b, err := r.Run(ctx, "squeue", "--json", "--states=all", "--jobs="+strings.Join(jobIDs, ","))
	if err == nil {
		if perr := parseSqueueJSON(b, want, out); perr == nil {
			return out, nil
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	// Fallback: the text format (older Slurm, no openapi plugin, or an id squeue no longer knows).
	if err := squeueText(ctx, r, jobIDs, want, out); err != nil {
		return nil, err
	}
	return out, nil
}

func squeueText(ctx context.Context, r Runner, ids []string, want map[string]bool, out map[taskKey]TaskState) error {
	const format = "%F|%K|%i|%T|%r|%N"
	b, err := r.Run(ctx, "squeue", "-h", "--states=all", "--jobs="+strings.Join(ids, ","), "-o", format)
	if err != nil {
		invalid := strings.Contains(err.Error(), "Invalid job id")
		if len(ids) > 1 && invalid {
			// One unknown id fails the whole call: ask one by one and skip the forgotten ones.
			for _, id := range ids {
				if err := squeueText(ctx, r, []string{id}, want, out); err != nil {
					return err
				}
			}
			return nil
		}
		if invalid {
			return nil // squeue has forgotten the job
		}
		return fmt.Errorf("query Slurm queue: %w", err)
	}
	return parseSqueueText(b, want, out)
}

// parseSqueueText reads lines of "%F|%K|%i|%T|%r|%N": array job id, task id or range (N/A for plain jobs),
// job id, state, reason, nodes.
func parseSqueueText(b []byte, want map[string]bool, out map[taskKey]TaskState) error {
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		f := strings.Split(line, "|")
		if len(f) < 6 {
			return fmt.Errorf("query Slurm queue: unexpected squeue line %q", line)
		}
		job, tasks, state, reason, node := f[0], f[1], f[3], f[4], f[5]
		if !want[job] {
			continue
		}
		st := TaskState{JobID: job, State: state, Reason: cleanReason(reason), Node: cleanNode(node), Source: "squeue"}
		if tasks == "N/A" || tasks == "" {
			st.Task = -1
			out[taskKey{job, -1}] = st
			continue
		}
		idx, err := ExpandTaskRange(tasks)
		if err != nil {
			return fmt.Errorf("query Slurm queue: %w", err)
		}
		for _, i := range idx {
			st.Task = i
			out[taskKey{job, i}] = st
		}
	}
	return nil
}

// squeueJob holds the fields mdnctl reads from `squeue --json`; numbers and states are decoded from both the
// 22.05 shapes (plain numbers, a state string, exit_code as a raw wait status) and the later ones
// ({"set":..,"number":..}, a list of states, exit_code as an object).
type squeueJob struct {
	JobID      json.RawMessage `json:"job_id"`
	ArrayJobID json.RawMessage `json:"array_job_id"`
	ArrayTask  json.RawMessage `json:"array_task_id"`
	ArrayStr   string          `json:"array_task_string"`
	State      json.RawMessage `json:"job_state"`
	ExitCode   json.RawMessage `json:"exit_code"`
	Reason     string          `json:"state_reason"`
	Nodes      string          `json:"nodes"`
}

func parseSqueueJSON(b []byte, want map[string]bool, out map[taskKey]TaskState) error {
	var doc struct {
		Jobs   []squeueJob       `json:"jobs"`
		Errors []json.RawMessage `json:"errors"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("squeue --json: %w", err)
	}
	if doc.Jobs == nil {
		return fmt.Errorf("squeue --json: no jobs list")
	}
	for _, j := range doc.Jobs {
		id, _ := jsonInt(j.JobID)
		arr, isArr := jsonInt(j.ArrayJobID)
		job := strconv.FormatInt(id, 10)
		if isArr && arr > 0 {
			job = strconv.FormatInt(arr, 10)
		}
		if !want[job] {
			continue // squeue 22.05 ignores --jobs with --json: filter here
		}
		st := TaskState{JobID: job, State: jsonState(j.State), Reason: cleanReason(j.Reason), Node: cleanNode(j.Nodes), Source: "squeue"}
		if code, ok := jsonExit(j.ExitCode); ok && !isActive(st.State) {
			st.ExitCode = &code
		}
		if !(isArr && arr > 0) {
			st.Task = -1
			out[taskKey{job, -1}] = st
			continue
		}
		if t, ok := jsonInt(j.ArrayTask); ok {
			st.Task = int(t)
			out[taskKey{job, int(t)}] = st
			continue
		}
		idx, err := ExpandTaskRange(j.ArrayStr)
		if err != nil {
			return err
		}
		st.ExitCode = nil // a record of several tasks that never ran
		if !isActive(st.State) {
			st.Reason = "never started"
		}
		for _, i := range idx {
			st.Task = i
			out[taskKey{job, i}] = st
		}
	}
	return nil
}

// jsonInt decodes 12, "12", or {"set": true, "number": 12}; null and {"set": false} are not set.
func jsonInt(raw json.RawMessage) (int64, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, false
	}
	var n int64
	if err := json.Unmarshal(raw, &n); err == nil {
		return n, true
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if v, err := strconv.ParseInt(s, 10, 64); err == nil {
			return v, true
		}
		return 0, false
	}
	var o struct {
		Set    *bool  `json:"set"`
		Number *int64 `json:"number"`
	}
	if err := json.Unmarshal(raw, &o); err == nil && o.Number != nil && (o.Set == nil || *o.Set) {
		return *o.Number, true
	}
	return 0, false
}

func jsonState(raw json.RawMessage) string {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s
	}
	var l []string
	if err := json.Unmarshal(raw, &l); err == nil && len(l) > 0 {
		return l[0]
	}
	return "UNKNOWN"
}

// jsonExit decodes the job's exit code: 22.05 gives the raw wait status (exit code << 8, or a signal number in
// the low bits); later versions give {"status": [...], "return_code": N or {"number": N}, "signal": {...}}.
func jsonExit(raw json.RawMessage) (int, bool) {
	if n, ok := jsonInt(raw); ok {
		if sig := n & 0x7f; sig != 0 {
			return 128 + int(sig), true
		}
		return int(n >> 8), true
	}
	var o struct {
		ReturnCode json.RawMessage `json:"return_code"`
		Signal     struct {
			ID json.RawMessage `json:"id"`
		} `json:"signal"`
	}
	if err := json.Unmarshal(raw, &o); err != nil {
		return 0, false
	}
	if sig, ok := jsonInt(o.Signal.ID); ok && sig > 0 {
		return 128 + int(sig), true
	}
	if n, ok := jsonInt(o.ReturnCode); ok {
		return int(n), true
	}
	return 0, false
}

func cleanReason(r string) string {
	if r == "None" || r == "(null)" {
		return ""
	}
	return r
}

func cleanNode(n string) string {
	if n == "(null)" {
		return ""
	}
	return n
}

// ExpandTaskRange expands an array task expression as squeue prints it: "3", "2-5", "[2-5%2]", "1,3,5-7",
// "0-15:4" (with a step).
func ExpandTaskRange(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if i := strings.IndexByte(s, '%'); i >= 0 {
		s = s[:i]
	}
	if s == "" {
		return nil, nil
	}
	var out []int
	for _, part := range strings.Split(s, ",") {
		step := 1
		if i := strings.IndexByte(part, ':'); i >= 0 {
			v, err := strconv.Atoi(part[i+1:])
			if err != nil || v < 1 {
				return nil, fmt.Errorf("array task range %q: bad step", s)
			}
			step, part = v, part[:i]
		}
		lo, hi := part, part
		if i := strings.IndexByte(part, '-'); i >= 0 {
			lo, hi = part[:i], part[i+1:]
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || b < a || b-a > 1_000_000 {
			return nil, fmt.Errorf("array task range %q: cannot read %q", s, part)
		}
		for i := a; i <= b; i += step {
			out = append(out, i)
		}
	}
	return out, nil
}
