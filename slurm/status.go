package slurm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// SubmissionStatus is one submission with the state of each of its tasks.
type SubmissionStatus struct {
	Submission
	TaskStates []TaskState    `json:"task_states"`
	Counts     map[string]int `json:"counts"` // tasks per state
	Active     bool           `json:"active"`
	Ranks      []RankResult   `json:"ranks,omitempty"` // training: each rank's row, when written
}

// RankResult is one torchrun rank's row of a training submission.
type RankResult struct {
	Rank    int             `json:"rank"`
	Status  string          `json:"status"`
	Error   string          `json:"error,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Elapsed float64         `json:"elapsed_s,omitempty"`
}

// PointCounts summarises a sweep's points.
type PointCounts struct {
	Total   int            `json:"total"`
	Done    int            `json:"done"`
	Pending int            `json:"pending"`
	Status  map[string]int `json:"status"` // rows per status (ok, failed, incorrect, timeout, ...)
}

// PointFailure is a point whose row is not ok.
type PointFailure struct {
	Point   string `json:"point"`
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

// RunStatus is everything `mdnctl status DIR` shows.
type RunStatus struct {
	Dir         string             `json:"dir"`
	Kind        string             `json:"kind"`  // sweep or train (of the latest submission)
	State       string             `json:"state"` // RUNNING, PENDING, DONE, INCOMPLETE, FAILED, CANCELLED
	Active      bool               `json:"active"`
	Submissions []SubmissionStatus `json:"submissions"`
	Points      *PointCounts       `json:"points,omitempty"`
	Failures    []PointFailure     `json:"failures,omitempty"`
	QueueError  string             `json:"queue_error,omitempty"` // squeue failed; states come from marker files only
	CheckedAt   time.Time          `json:"checked_at"`
}

// Status gathers the state of every submission of a run directory (squeue plus the tasks' marker files) and,
// for sweeps, the points done, pending and failed from the merged results rows.
func Status(ctx context.Context, r Runner, runDir string) (*RunStatus, error) {
	abs, err := filepath.Abs(runDir)
	if err != nil {
		return nil, err
	}
	st, ok, err := LoadState(abs)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s: no Slurm submission recorded here (no %s)", runDir, statePath(abs))
	}
	rs := &RunStatus{Dir: abs, CheckedAt: time.Now().UTC()}
	ids := make([]string, 0, len(st.Submissions))
	for _, s := range st.Submissions {
		ids = append(ids, s.JobID)
	}
	q, qerr := QueryQueue(ctx, r, ids)
	if qerr != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		rs.QueueError = qerr.Error()
		q = nil
	}
	for _, s := range st.Submissions {
		ss := SubmissionStatus{Submission: s, Counts: map[string]int{}}
		if s.Kind == "train" {
			ss.TaskStates = []TaskState{taskState(abs, s.JobID, -1, q, qerr != nil)}
			ss.Ranks = rankResults(abs, s.JobID)
		} else {
			for i := 0; i < s.Tasks; i++ {
				ss.TaskStates = append(ss.TaskStates, taskState(abs, s.JobID, i, q, qerr != nil))
			}
		}
		for _, t := range ss.TaskStates {
			ss.Counts[t.State]++
			if t.Active() {
				ss.Active = true
			}
		}
		rs.Active = rs.Active || ss.Active
		rs.Submissions = append(rs.Submissions, ss)
	}
	last := rs.Submissions[len(rs.Submissions)-1]
	rs.Kind = last.Kind
	if rs.Kind == "sweep" {
		if err := sweepPoints(abs, rs); err != nil {
			return nil, err
		}
	}
	rs.State = overall(rs, last)
	return rs, nil
}

func overall(rs *RunStatus, last SubmissionStatus) string {
	if rs.Active {
		for _, s := range rs.Submissions {
			if s.Counts["RUNNING"] > 0 || s.Counts["COMPLETING"] > 0 || s.Counts["CONFIGURING"] > 0 {
				return "RUNNING"
			}
		}
		return "PENDING"
	}
	if rs.Kind == "sweep" && rs.Points != nil {
		if rs.Points.Pending == 0 {
			return "DONE"
		}
		return "INCOMPLETE"
	}
	t := last.TaskStates[0]
	switch {
	case t.State == "COMPLETED" && (t.ExitCode == nil || *t.ExitCode == 0):
		return "DONE"
	case t.State == "CANCELLED" || t.State == "TERMINATED":
		return "CANCELLED"
	case t.State == "UNKNOWN":
		return "UNKNOWN"
	}
	return "FAILED"
}

// taskState combines squeue's word (authoritative while it remembers the task) with the marker files.
func taskState(runDir, job string, task int, q map[taskKey]TaskState, queueFailed bool) TaskState {
	if t, ok := q[taskKey{job, task}]; ok {
		if t.ExitCode == nil && !t.Active() {
			if code, ok := exitRecord(runDir, job, task); ok {
				t.ExitCode = &code
			}
		}
		return t
	}
	t := TaskState{JobID: job, Task: task, Source: "marker"}
	tag := markerTag(job, task)
	if code, ok := exitRecord(runDir, job, task); ok {
		t.ExitCode = &code
		switch {
		case code == 0:
			t.State = "COMPLETED"
		case code == 143 || code == 137:
			t.State, t.Reason = "TERMINATED", "killed by a signal (scancel, time limit or preemption)"
		default:
			t.State = "FAILED"
		}
		t.Node = startHost(runDir, tag)
		return t
	}
	if host := startHost(runDir, tag); host != "" || fileExists(filepath.Join(SlurmDir(runDir), "tasks", tag+".start")) {
		t.Node = host
		if queueFailed {
			t.State, t.Reason, t.Source = "UNKNOWN", "started; squeue unavailable", "none"
			return t
		}
		t.State, t.Reason = "UNKNOWN", "started but left no exit record (killed hard: cancel, time limit or node failure)"
		return t
	}
	t.Source = "none"
	if queueFailed {
		t.State, t.Reason = "UNKNOWN", "squeue unavailable"
		return t
	}
	t.State, t.Reason = "NOT_RUN", "not in the queue and never started (cancelled before it ran?)"
	return t
}

func markerTag(job string, task int) string {
	if task < 0 {
		return job
	}
	return job + "_" + strconv.Itoa(task)
}

func exitRecord(runDir, job string, task int) (int, bool) {
	b, err := os.ReadFile(filepath.Join(SlurmDir(runDir), "tasks", markerTag(job, task)+".exit"))
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, false
	}
	return n, true
}

func startHost(runDir, tag string) string {
	b, err := os.ReadFile(filepath.Join(SlurmDir(runDir), "tasks", tag+".start"))
	if err != nil {
		return ""
	}
	for _, f := range strings.Fields(string(b)) {
		if h, ok := strings.CutPrefix(f, "host="); ok {
			return h
		}
	}
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func sweepPoints(runDir string, rs *RunStatus) error {
	pts, err := LoadPoints(runDir)
	if err != nil {
		return err
	}
	rows, err := ReadRows(runDir)
	if err != nil {
		return err
	}
	last := map[string]map[string]json.RawMessage{}
	for _, r := range rows {
		if p := RowString(r, "point"); p != "" {
			last[p] = r
		}
	}
	pc := &PointCounts{Total: len(pts), Status: map[string]int{}}
	for _, p := range pts {
		r, ok := last[p.ID]
		if !ok {
			pc.Pending++
			continue
		}
		pc.Done++
		status := RowString(r, "status")
		pc.Status[status]++
		if status != "ok" {
			rs.Failures = append(rs.Failures, PointFailure{Point: p.ID, Status: status, Message: rowMessage(r)})
		}
	}
	sort.Slice(rs.Failures, func(i, j int) bool { return rs.Failures[i].Point < rs.Failures[j].Point })
	rs.Points = pc
	return nil
}

// rowMessage finds a failure message in a row: "error" as a string or {"message": ...}, else "reason".
func rowMessage(r map[string]json.RawMessage) string {
	if s := RowString(r, "error"); s != "" {
		return s
	}
	var o struct {
		Message string `json:"message"`
	}
	if v, ok := r["error"]; ok && json.Unmarshal(v, &o) == nil && o.Message != "" {
		return o.Message
	}
	return RowString(r, "reason")
}

func rankResults(runDir, job string) []RankResult {
	files, _ := filepath.Glob(filepath.Join(SlurmDir(runDir), "result."+job+".rank*.jsonl"))
	var out []RankResult
	for _, f := range files {
		base := filepath.Base(f)
		rank, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(base, "result."+job+".rank"), ".jsonl"))
		if err != nil {
			continue
		}
		rows, err := readRowFile(f)
		if err != nil || len(rows) == 0 {
			continue
		}
		r := rows[len(rows)-1]
		rr := RankResult{Rank: rank, Status: RowString(r, "status"), Error: rowMessage(r), Result: r["result"]}
		_ = json.Unmarshal(r["elapsed_s"], &rr.Elapsed)
		out = append(out, rr)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Rank < out[j].Rank })
	return out
}

// ErrActive is returned when a run directory still has queued or running jobs.
var ErrActive = errors.New("still queued or running")

// refuseIfActive stops a second submission into a directory whose jobs are still in the queue.
func refuseIfActive(ctx context.Context, r Runner, runDir string) error {
	st, ok, err := LoadState(runDir)
	if err != nil || !ok {
		return err
	}
	var ids []string
	for _, s := range st.Submissions {
		ids = append(ids, s.JobID)
	}
	q, err := QueryQueue(ctx, r, ids)
	if err != nil {
		return fmt.Errorf("check earlier jobs of %s: %w", runDir, err)
	}
	for _, t := range q {
		if t.Active() {
			return fmt.Errorf("%s: job %s is %w (%s); wait for it or run `mdnctl cancel %s` first",
				runDir, t.JobID, ErrActive, t.State, runDir)
		}
	}
	return nil
}

// ActiveJobs returns the job ids of a run directory that squeue still lists as queued or running.
func ActiveJobs(ctx context.Context, r Runner, runDir string) ([]string, error) {
	st, ok, err := LoadState(runDir)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s: no Slurm submission recorded here (no %s)", runDir, statePath(runDir))
	}
	var ids []string
	for _, s := range st.Submissions {
		ids = append(ids, s.JobID)
	}
	q, err := QueryQueue(ctx, r, ids)
	if err != nil {
		return nil, err
	}
	return activeIDs(q), nil
}

func activeIDs(q map[taskKey]TaskState) []string {
	set := map[string]bool{}
	for _, t := range q {
		if t.Active() {
			set[t.JobID] = true
		}
	}
	out := make([]string, 0, len(set))
	for id := range set {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// Cancel runs scancel on the given job ids (array job ids cancel every task).
func Cancel(ctx context.Context, r Runner, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := r.Run(ctx, "scancel", ids...); err != nil {
		return fmt.Errorf("cancel %s: %w", strings.Join(ids, " "), err)
	}
	return nil
}

// Wait polls squeue at a fixed interval (sbatch --wait backs off to ~40 s; shared/docs/slurm.md) until none of
// the jobs is queued or running, calling onPoll (if given) after each poll.
func Wait(ctx context.Context, r Runner, ids []string, interval time.Duration, onPoll func(active []string)) error {
	if interval <= 0 {
		interval = 2 * time.Second
	}
	for {
		q, err := QueryQueue(ctx, r, ids)
		if err != nil {
			return err
		}
		act := activeIDs(q)
		if onPoll != nil {
			onPoll(act)
		}
		if len(act) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// WaitRun waits for every job of a run directory.
func WaitRun(ctx context.Context, r Runner, runDir string, interval time.Duration, onPoll func(active []string)) error {
	st, ok, err := LoadState(runDir)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s: no Slurm submission recorded here", runDir)
	}
	var ids []string
	for _, s := range st.Submissions {
		ids = append(ids, s.JobID)
	}
	return Wait(ctx, r, ids, interval, onPoll)
}
