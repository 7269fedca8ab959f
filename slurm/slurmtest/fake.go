// Package slurmtest is a fake Slurm for tests: it implements slurm.Runner (sbatch --parsable, squeue --json in the
// 22.05 shape, squeue -h -o, scancel) over an in-memory queue whose task states tests set by hand.
package slurmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Fake is an in-memory Slurm queue.
type Fake struct {
	mu     sync.Mutex
	Calls  [][]string // every command run, name first
	NextID int        // next job id (default 100)
	Jobs   map[string]*Job
	// NoJSON makes `squeue --json` fail as on a Slurm without the openapi plugin (forces the text fallback).
	NoJSON bool
	// Forgotten job ids are no longer known to squeue (MinJobAge passed): --json omits them, text mode fails
	// with "Invalid job id specified".
	Forgotten map[string]bool
	// SbatchSuffix is appended to the id sbatch prints (e.g. ";cluster").
	SbatchSuffix string
	// Other jobs in the queue (other users): squeue --json lists them, whatever --jobs says (as 22.05 does).
	Noise bool
}

// Job is one submitted job: an array (Tasks > 0) or a plain job (Tasks == 0).
type Job struct {
	ID      string
	Script  string
	Tasks   int
	States  map[int]string // per task (or -1 for a plain job): PENDING, RUNNING, COMPLETED, FAILED, CANCELLED
	Exit    map[int]int    // exit codes of ended tasks
	Started map[int]bool   // tasks that ran (squeue lists them one by one)
}

var arrayRE = regexp.MustCompile(`(?m)^#SBATCH --array=0-(\d+)`)

// Run implements slurm.Runner.
func (f *Fake) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls = append(f.Calls, append([]string{name}, args...))
	if f.Jobs == nil {
		f.Jobs = map[string]*Job{}
	}
	switch name {
	case "sbatch":
		return f.sbatch(args)
	case "squeue":
		return f.squeue(args)
	case "scancel":
		for _, id := range args {
			j, ok := f.Jobs[id]
			if !ok {
				return nil, &ExitError{Code: 1, Stderr: "scancel: error: Invalid job id " + id}
			}
			for t, s := range j.States {
				switch s {
				case "PENDING":
					j.States[t] = "CANCELLED"
				case "RUNNING":
					j.States[t] = "CANCELLED"
					j.Exit[t] = 143
				}
			}
		}
		return nil, nil
	}
	return nil, &ExitError{Code: 127, Stderr: name + ": command not found"}
}

// ExitError is what the fake returns for a failed command; Stderr is in the message like a real CommandError.
type ExitError struct {
	Code   int
	Stderr string
}

func (e *ExitError) Error() string { return e.Stderr }

func (f *Fake) sbatch(args []string) ([]byte, error) {
	if len(args) != 2 || args[0] != "--parsable" {
		return nil, &ExitError{Code: 1, Stderr: fmt.Sprintf("fake sbatch: unexpected arguments %q", args)}
	}
	b, err := os.ReadFile(args[1])
	if err != nil {
		return nil, &ExitError{Code: 1, Stderr: "sbatch: error: Unable to open file " + args[1]}
	}
	if !strings.HasPrefix(string(b), "#!/bin/bash\n") {
		return nil, &ExitError{Code: 1, Stderr: "sbatch: error: script does not start with #!/bin/bash"}
	}
	if f.NextID == 0 {
		f.NextID = 100
	}
	id := strconv.Itoa(f.NextID)
	f.NextID++
	j := &Job{ID: id, Script: args[1], States: map[int]string{}, Exit: map[int]int{}, Started: map[int]bool{}}
	if m := arrayRE.FindSubmatch(b); m != nil {
		n, _ := strconv.Atoi(string(m[1]))
		j.Tasks = n + 1
		for i := 0; i <= n; i++ {
			j.States[i] = "PENDING"
		}
	} else {
		j.States[-1] = "PENDING"
	}
	f.Jobs[id] = j
	return []byte(id + f.SbatchSuffix + "\n"), nil
}

// Set puts task t of job id into state (with an exit code when it ended).
func (f *Fake) Set(id string, t int, state string, exit int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.Jobs[id]
	j.States[t] = state
	if state != "PENDING" {
		j.Started[t] = true
	}
	if state != "PENDING" && state != "RUNNING" {
		j.Exit[t] = exit
	} else {
		delete(j.Exit, t)
	}
}

// Count returns how many calls of the named command were made.
func (f *Fake) Count(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.Calls {
		if c[0] == name {
			n++
		}
	}
	return n
}

func (f *Fake) squeue(args []string) ([]byte, error) {
	var ids []string
	jsonOut, format := false, ""
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--json":
			jsonOut = true
		case strings.HasPrefix(a, "--jobs="):
			ids = strings.Split(strings.TrimPrefix(a, "--jobs="), ",")
		case a == "-o" && i+1 < len(args):
			format = args[i+1]
			i++
		}
	}
	if jsonOut {
		if f.NoJSON {
			return nil, &ExitError{Code: 1, Stderr: "squeue: unrecognized option '--json'"}
		}
		return f.squeueJSON()
	}
	if format != "%F|%K|%i|%T|%r|%N" {
		return nil, &ExitError{Code: 1, Stderr: "fake squeue: unexpected format " + format}
	}
	var lines []string
	for _, id := range ids {
		j, ok := f.Jobs[id]
		if !ok || f.Forgotten[id] {
			return nil, &ExitError{Code: 1, Stderr: "slurm_load_jobs error: Invalid job id specified"}
		}
		for _, r := range f.records(j) {
			tid := "N/A"
			if r.task >= 0 {
				tid = strconv.Itoa(r.task)
			} else if r.rng != "" {
				tid = r.rng
			}
			lines = append(lines, fmt.Sprintf("%s|%s|%s_%s|%s|%s|%s", id, tid, id, tid, r.state, r.reason, r.node))
		}
	}
	return []byte(strings.Join(lines, "\n") + "\n"), nil
}

type record struct {
	task   int // -1: plain job or a pending range
	rng    string
	state  string
	exit   int
	reason string
	node   string
}

// records lists a job as squeue does: one record per started task, one record per state for the tasks that never
// started (pending, or cancelled while pending).
func (f *Fake) records(j *Job) []record {
	var out []record
	if j.Tasks == 0 {
		r := record{task: -1, state: j.States[-1], exit: j.Exit[-1], reason: "None", node: "node1"}
		if r.state == "PENDING" {
			r.node, r.reason = "", "Resources"
		}
		return append(out, r)
	}
	groups := map[string][]string{}
	for t := 0; t < j.Tasks; t++ {
		s := j.States[t]
		if s == "PENDING" || !j.Started[t] {
			groups[s] = append(groups[s], strconv.Itoa(t))
			continue
		}
		out = append(out, record{task: t, state: s, exit: j.Exit[t], reason: "None", node: "node1"})
	}
	for _, s := range []string{"PENDING", "CANCELLED"} {
		if g := groups[s]; len(g) > 0 {
			out = append(out, record{task: -1, rng: strings.Join(g, ","), state: s, reason: "JobArrayTaskLimit"})
		}
	}
	return out
}

func (f *Fake) squeueJSON() ([]byte, error) {
	type jj struct {
		JobID      int     `json:"job_id"`
		ArrayJobID int     `json:"array_job_id"`
		ArrayTask  *int    `json:"array_task_id"`
		ArrayStr   string  `json:"array_task_string"`
		State      string  `json:"job_state"`
		ExitCode   int     `json:"exit_code"`
		Reason     string  `json:"state_reason"`
		Nodes      string  `json:"nodes"`
		Name       string  `json:"name"`
		Extra      float64 `json:"time_limit"`
	}
	var jobs []jj
	keys := make([]string, 0, len(f.Jobs))
	for id := range f.Jobs {
		keys = append(keys, id)
	}
	sort.Strings(keys)
	sub := 1
	for _, id := range keys {
		if f.Forgotten[id] {
			continue
		}
		j := f.Jobs[id]
		n, _ := strconv.Atoi(id)
		for _, r := range f.records(j) {
			x := jj{JobID: n, State: r.state, ExitCode: r.exit << 8, Reason: r.reason, Nodes: r.node, Name: "mdn"}
			if j.Tasks > 0 {
				x.ArrayJobID = n
				if r.task >= 0 {
					t := r.task
					x.ArrayTask = &t
					x.JobID = n*1000 + sub // element job ids differ from the array id
					sub++
				} else {
					x.ArrayStr = r.rng + "%2"
				}
			}
			jobs = append(jobs, x)
		}
	}
	if f.Noise {
		t := 0
		jobs = append(jobs, jj{JobID: 7, ArrayJobID: 7, ArrayTask: &t, State: "RUNNING", Reason: "None", Nodes: "other"},
			jj{JobID: 8, State: "FAILED", ExitCode: 1 << 8, Reason: "None", Nodes: "other"})
	}
	doc := map[string]any{"meta": map[string]any{"plugin": map[string]any{"type": "openapi/v0.0.38"}}, "errors": []any{}, "jobs": jobs}
	return json.Marshal(doc)
}
