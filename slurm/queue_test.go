package slurm_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/mdnctl/mdnctl/slurm"
	"github.com/mdnctl/mdnctl/slurm/slurmtest"
)

// runnerFunc adapts a function to slurm.Runner.
type runnerFunc func(name string, args ...string) ([]byte, error)

func (f runnerFunc) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	return f(name, args...)
}

func isJSON(args []string) bool {
	for _, a := range args {
		if a == "--json" {
			return true
		}
	}
	return false
}

type want struct {
	state, reason string
	exit          int // -1: none
}

func checkTasks(t *testing.T, q map[string]slurm.TaskState, w map[string]want) {
	t.Helper()
	if len(q) != len(w) {
		t.Errorf("got %d tasks, want %d: %v", len(q), len(w), q)
	}
	for k, x := range w {
		got, ok := q[k]
		if !ok {
			t.Errorf("task %s missing", k)
			continue
		}
		exit := -1
		if got.ExitCode != nil {
			exit = *got.ExitCode
		}
		if got.State != x.state || got.Reason != x.reason || exit != x.exit {
			t.Errorf("task %s: got %s/%q/exit %d, want %s/%q/exit %d", k, got.State, got.Reason, exit, x.state, x.reason, x.exit)
		}
	}
}

func flat(t *testing.T, r slurm.Runner, ids ...string) map[string]slurm.TaskState {
	t.Helper()
	q, err := slurm.QueryQueue(context.Background(), r, ids)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]slurm.TaskState{}
	for _, ts := range q {
		k := ts.JobID
		if ts.Task >= 0 {
			k += "_" + string(rune('0'+ts.Task))
		}
		out[k] = ts
	}
	return out
}

// A real `squeue --json --states=all` of Slurm 22.05.8 (testdata, captured from scripts/slurm-up.sh's cluster):
// array 22 (%1: task 0 running, 1-3 pending), job 23 exited 3, array 14 cancelled (0 and 1 while running).
func TestQueryQueueSlurm2205JSON(t *testing.T) {
	data, err := os.ReadFile("testdata/squeue-22.05.json")
	if err != nil {
		t.Fatal(err)
	}
	r := runnerFunc(func(name string, args ...string) ([]byte, error) {
		if name != "squeue" || !isJSON(args) {
			t.Fatalf("unexpected call %s %v", name, args)
		}
		return data, nil // 22.05 ignores --jobs with --json: QueryQueue filters
	})
	checkTasks(t, flat(t, r, "22", "23", "14"), map[string]want{
		"22_0": {"RUNNING", "", -1},
		"22_1": {"PENDING", "JobArrayTaskLimit", -1},
		"22_2": {"PENDING", "JobArrayTaskLimit", -1},
		"22_3": {"PENDING", "JobArrayTaskLimit", -1},
		"23":   {"FAILED", "NonZeroExitCode", 3},
		"14_0": {"CANCELLED", "", 143},
		"14_1": {"CANCELLED", "", 143},
		"14_2": {"CANCELLED", "never started", -1},
		"14_3": {"CANCELLED", "never started", -1},
		"14_4": {"CANCELLED", "never started", -1},
		"14_5": {"CANCELLED", "never started", -1},
	})
	if q := flat(t, r, "23"); len(q) != 1 {
		t.Errorf("filtering by job id: %v", q)
	}
}

// Slurm 23.02+ reports numbers as {"set","infinite","number"}, states as lists and exit codes as objects.
func TestQueryQueueNewerJSON(t *testing.T) {
	doc := `{"jobs":[
 {"job_id":41,"array_job_id":{"set":true,"infinite":false,"number":40},"array_task_id":{"set":true,"infinite":false,"number":1},
  "array_task_string":"","job_state":["COMPLETED"],"exit_code":{"status":["SUCCESS"],"return_code":{"set":true,"infinite":false,"number":0}},"state_reason":"None","nodes":"gpu01"},
 {"job_id":42,"array_job_id":{"set":true,"infinite":false,"number":40},"array_task_id":{"set":true,"infinite":false,"number":2},
  "array_task_string":"","job_state":["FAILED"],"exit_code":{"status":["EXIT_CODE"],"return_code":{"set":true,"infinite":false,"number":4}},"state_reason":"NonZeroExitCode","nodes":"gpu02"},
 {"job_id":40,"array_job_id":{"set":true,"infinite":false,"number":40},"array_task_id":{"set":false,"infinite":false,"number":0},
  "array_task_string":"3-4%2","job_state":["PENDING"],"exit_code":{"status":["PENDING"],"return_code":{"set":false,"infinite":false,"number":0}},"state_reason":"JobArrayTaskLimit","nodes":""},
 {"job_id":50,"array_job_id":{"set":true,"infinite":false,"number":0},"array_task_id":{"set":false,"infinite":false,"number":0},
  "array_task_string":"","job_state":["CANCELLED"],"exit_code":{"status":["SIGNALED"],"return_code":{"set":true,"number":0},"signal":{"id":{"set":true,"number":15},"name":"TERM"}},"state_reason":"None","nodes":"gpu03"}
]}`
	r := runnerFunc(func(string, ...string) ([]byte, error) { return []byte(doc), nil })
	checkTasks(t, flat(t, r, "40", "50"), map[string]want{
		"40_1": {"COMPLETED", "", 0},
		"40_2": {"FAILED", "NonZeroExitCode", 4},
		"40_3": {"PENDING", "JobArrayTaskLimit", -1},
		"40_4": {"PENDING", "JobArrayTaskLimit", -1},
		"50":   {"CANCELLED", "", 143},
	})
}

// Without the openapi plugin `squeue --json` fails: the text format is read instead; an id squeue has forgotten
// fails the whole text call, so ids are asked one by one.
func TestQueryQueueTextFallback(t *testing.T) {
	text, err := os.ReadFile("testdata/squeue-22.05.txt")
	if err != nil {
		t.Fatal(err)
	}
	var calls []string
	r := runnerFunc(func(name string, args ...string) ([]byte, error) {
		calls = append(calls, strings.Join(args, " "))
		if isJSON(args) {
			return nil, errors.New("squeue: unrecognized option '--json'")
		}
		if strings.Contains(strings.Join(args, " "), "99") {
			return nil, errors.New("squeue -h ...: slurm_load_jobs error: Invalid job id specified")
		}
		return text, nil
	})
	checkTasks(t, flat(t, r, "22", "23", "99"), map[string]want{
		"22_0": {"RUNNING", "", -1},
		"22_1": {"PENDING", "JobArrayTaskLimit", -1},
		"22_2": {"PENDING", "JobArrayTaskLimit", -1},
		"22_3": {"PENDING", "JobArrayTaskLimit", -1},
		"23":   {"FAILED", "NonZeroExitCode", -1},
	})
	if len(calls) != 5 { // json, text(all), then text per id
		t.Errorf("calls: %q", calls)
	}
	// Any other squeue failure is an error.
	bad := runnerFunc(func(string, ...string) ([]byte, error) { return nil, errors.New("squeue: cannot connect to slurmctld") })
	if _, err := slurm.QueryQueue(context.Background(), bad, []string{"1"}); err == nil || !strings.Contains(err.Error(), "slurmctld") {
		t.Errorf("squeue failure: %v", err)
	}
}

func TestExpandTaskRange(t *testing.T) {
	for in, w := range map[string][]int{
		"3": {3}, "2-5": {2, 3, 4, 5}, "[2-5%2]": {2, 3, 4, 5}, "1,3,5-7": {1, 3, 5, 6, 7}, "0-8:4": {0, 4, 8}, "": nil,
	} {
		got, err := slurm.ExpandTaskRange(in)
		if err != nil || !reflect.DeepEqual(got, w) {
			t.Errorf("ExpandTaskRange(%q) = %v, %v; want %v", in, got, err, w)
		}
	}
	for _, in := range []string{"a", "5-2", "1-3:0"} {
		if _, err := slurm.ExpandTaskRange(in); err == nil {
			t.Errorf("ExpandTaskRange(%q) accepted", in)
		}
	}
}

// After MinJobAge squeue knows nothing: states come from the tasks' start/exit records.
func TestStatusFromMarkersWhenSqueueForgot(t *testing.T) {
	ctx := context.Background()
	for _, noJSON := range []bool{false, true} {
		f := &slurmtest.Fake{NoJSON: noJSON, Noise: true}
		out := t.TempDir()
		_, sub := submitTest(t, f, out, 5, slurm.Config{Shards: 5})
		marks := filepath.Join(out, "slurm", "tasks")
		mark := func(task, ext, content string) {
			if err := os.WriteFile(filepath.Join(marks, sub.JobID+"_"+task+ext), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for _, task := range []string{"0", "1", "2", "3"} {
			mark(task, ".start", "host=node7 start=1700000000\n")
		}
		mark("0", ".exit", "0\n")
		mark("1", ".exit", "3\n")
		mark("2", ".exit", "143\n")
		// task 3 started and left no exit record; task 4 never started.
		f.Forgotten = map[string]bool{sub.JobID: true}
		st, err := slurm.Status(ctx, f, out)
		if err != nil {
			t.Fatal(err)
		}
		got := map[int]string{}
		for _, ts := range st.Submissions[0].TaskStates {
			got[ts.Task] = ts.State
			if ts.Task < 4 && ts.Node != "node7" {
				t.Errorf("task %d node %q", ts.Task, ts.Node)
			}
		}
		w := map[int]string{0: "COMPLETED", 1: "FAILED", 2: "TERMINATED", 3: "UNKNOWN", 4: "NOT_RUN"}
		if !reflect.DeepEqual(got, w) {
			t.Errorf("noJSON=%v: states %v, want %v", noJSON, got, w)
		}
		if st.Active || st.State != "INCOMPLETE" {
			t.Errorf("state %s active %v", st.State, st.Active)
		}
	}
}

func TestStatusSqueueDown(t *testing.T) {
	f := &slurmtest.Fake{}
	out := t.TempDir()
	submitTest(t, f, out, 2, slurm.Config{})
	down := runnerFunc(func(string, ...string) ([]byte, error) {
		return nil, errors.New("squeue: Unable to contact slurm controller")
	})
	st, err := slurm.Status(context.Background(), down, out)
	if err != nil {
		t.Fatal(err)
	}
	if st.QueueError == "" || st.Submissions[0].TaskStates[0].State != "UNKNOWN" {
		t.Errorf("%+v", st)
	}
}
