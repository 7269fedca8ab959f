package slurm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/slurm"
	"github.com/mdnctl/mdnctl/slurm/slurmtest"
)

func ids(pts []slurm.Point) []string {
	out := make([]string, len(pts))
	for i, p := range pts {
		out[i] = p.ID
	}
	return out
}

func TestShardPointsRoundRobin(t *testing.T) {
	pts := points(12)
	sh := slurm.ShardPoints(pts, 5)
	if len(sh) != 5 {
		t.Fatalf("%d shards", len(sh))
	}
	sizes := []int{}
	seen := map[string]int{}
	for i, s := range sh {
		sizes = append(sizes, len(s))
		for j, p := range s {
			seen[p.ID]++
			if p.ID != pts[i+5*j].ID {
				t.Errorf("shard %d position %d holds %s, want %s (point i goes to shard i mod n, in order)", i, j, p.ID, pts[i+5*j].ID)
			}
		}
	}
	if !reflect.DeepEqual(sizes, []int{3, 3, 2, 2, 2}) {
		t.Errorf("shard sizes %v", sizes)
	}
	if len(seen) != 12 {
		t.Errorf("points lost: %v", seen)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("point %s in %d shards", id, n)
		}
	}
	if n := len(slurm.ShardPoints(pts[:3], 8)); n != 3 {
		t.Errorf("3 points in 8 shards gave %d shards, want 3 (no empty array task)", n)
	}
	for _, c := range []struct{ points, conc, want int }{{12, 2, 8}, {5, 2, 5}, {100, 0, 32}, {5000, 500, 1000}, {0, 2, 1}} {
		if got := slurm.DefaultShards(c.points, c.conc); got != c.want {
			t.Errorf("DefaultShards(%d, %d) = %d, want %d", c.points, c.conc, got, c.want)
		}
	}
}

func submitTest(t *testing.T, f *slurmtest.Fake, out string, n int, cfg slurm.Config) (*slurm.SweepPlan, slurm.Submission) {
	t.Helper()
	plan, sub, err := slurm.SubmitSweep(context.Background(), f, slurm.SweepSubmission{Name: "t", OutDir: out,
		Points: points(n), Config: cfg, Binary: "/b/mdnctl", Python: "/p/python"})
	if err != nil {
		t.Fatal(err)
	}
	return plan, sub
}

func TestSubmitSweepWritesShardsAndState(t *testing.T) {
	f := &slurmtest.Fake{SbatchSuffix: ";cluster1"}
	out := filepath.Join(t.TempDir(), "res")
	plan, sub := submitTest(t, f, out, 7, slurm.Config{Concurrency: 2, Shards: 3})
	if sub.JobID != "100" || sub.Tasks != 3 || sub.Points != 7 || sub.Kind != "sweep" {
		t.Fatalf("submission %+v", sub)
	}
	if c := f.Calls[len(f.Calls)-1]; !reflect.DeepEqual(c, []string{"sbatch", "--parsable", plan.ScriptPath}) {
		t.Fatalf("sbatch call %v", c)
	}
	b, err := os.ReadFile(plan.ScriptPath)
	if err != nil || string(b) != plan.Script {
		t.Fatalf("script not kept in the run directory: %v", err)
	}
	// Each shard file decodes back to the planned points, with protocol version and job id filled in.
	var all []string
	for i := 0; i < 3; i++ {
		data, err := os.ReadFile(slurm.ShardFile(plan.Dir, i))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var p slurm.Point
			if err := json.Unmarshal([]byte(line), &p); err != nil {
				t.Fatal(err)
			}
			if p.Spec.V != launcher.ProtocolVersion || p.Spec.ID != p.ID || len(p.Row) == 0 {
				t.Errorf("shard point %+v", p)
			}
			all = append(all, p.ID)
		}
	}
	sort.Strings(all)
	if want := ids(points(7)); !reflect.DeepEqual(all, want) {
		t.Errorf("shards hold %v, want %v", all, want)
	}
	st, ok, err := slurm.LoadState(out)
	if err != nil || !ok || len(st.Submissions) != 1 || st.Submissions[0].JobID != "100" {
		t.Fatalf("state %+v %v %v", st, ok, err)
	}
	// A second submission while the first is queued is refused.
	_, _, err = slurm.SubmitSweep(context.Background(), f, slurm.SweepSubmission{Name: "t", OutDir: out,
		Points: points(2), Binary: "/b/mdnctl", Python: "/p/python"})
	if !errors.Is(err, slurm.ErrActive) {
		t.Fatalf("second submission while active: %v", err)
	}
}

func TestPrepareSweepRejects(t *testing.T) {
	pts := points(2)
	dup := append(points(2), points(1)...)
	for _, c := range []struct {
		name string
		sub  slurm.SweepSubmission
		want string
	}{
		{"no points", slurm.SweepSubmission{OutDir: "/r"}, "no points"},
		{"duplicate", slurm.SweepSubmission{OutDir: "/r", Points: dup}, "appears twice"},
		{"no kind", slurm.SweepSubmission{OutDir: "/r", Points: []slurm.Point{{ID: "x"}}}, "no job kind"},
		{"bad row", slurm.SweepSubmission{OutDir: "/r", Points: []slurm.Point{{ID: "x", Spec: pts[0].Spec, Row: []byte(`[1]`)}}}, "JSON object"},
		{"bad time", slurm.SweepSubmission{OutDir: "/r", Points: pts, Config: slurm.Config{Time: "2 hours"}}, "slurm.time"},
	} {
		c.sub.Binary, c.sub.Python = "/b", "/p"
		if _, err := slurm.PrepareSweep(c.sub); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

// writeRows appends rows for the given points to the task's own results file, as run-shard does.
func writeRows(t *testing.T, out, tag string, pts []string, status string) {
	t.Helper()
	w, err := slurm.OpenRows(filepath.Join(out, "results."+tag+".jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, p := range pts {
		row := map[string]any{"point": p, "status": status}
		if status != "ok" {
			row["error"] = "boom " + p
		}
		if err := w.Append(row); err != nil {
			t.Fatal(err)
		}
	}
}

func TestResumeCancelledArray(t *testing.T) {
	ctx := context.Background()
	f := &slurmtest.Fake{}
	out := t.TempDir()
	plan, sub := submitTest(t, f, out, 12, slurm.Config{Concurrency: 2, Shards: 6})
	// Tasks 0 and 1 ran: task 0 finished both its points (one failed), task 1 finished one point then was
	// cancelled mid-way through its second (a torn last line is left behind).
	f.Set(sub.JobID, 0, "COMPLETED", 0)
	f.Set(sub.JobID, 1, "RUNNING", 0)
	writeRows(t, out, sub.JobID+"_0", ids(plan.Shards[0])[:1], "ok")
	writeRows(t, out, sub.JobID+"_0", ids(plan.Shards[0])[1:], "failed")
	writeRows(t, out, sub.JobID+"_1", ids(plan.Shards[1])[:1], "ok")
	torn, _ := os.OpenFile(filepath.Join(out, "results."+sub.JobID+"_1.jsonl"), os.O_APPEND|os.O_WRONLY, 0)
	_, _ = torn.WriteString(`{"point":"` + plan.Shards[1][1].ID + `","status":"o`)
	torn.Close()

	// Resume is refused while the array is active.
	if _, _, err := slurm.ResumeSweep(ctx, f, out, slurm.ResumeOptions{Binary: "/b", Python: "/p"}); !errors.Is(err, slurm.ErrActive) {
		t.Fatalf("resume while running: %v", err)
	}
	act, err := slurm.ActiveJobs(ctx, f, out)
	if err != nil || !reflect.DeepEqual(act, []string{sub.JobID}) {
		t.Fatalf("active jobs %v %v", act, err)
	}
	if err := slurm.Cancel(ctx, f, act); err != nil {
		t.Fatal(err)
	}
	st, err := slurm.Status(ctx, f, out)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != "INCOMPLETE" || st.Active || st.Points.Total != 12 || st.Points.Done != 3 || st.Points.Pending != 9 {
		t.Fatalf("after cancel: %s active=%v %+v", st.State, st.Active, *st.Points)
	}
	if len(st.Failures) != 1 || st.Failures[0].Point != plan.Shards[0][1].ID || st.Failures[0].Message != "boom "+plan.Shards[0][1].ID {
		t.Fatalf("failures %+v", st.Failures)
	}
	counts := st.Submissions[0].Counts
	if counts["COMPLETED"] != 1 || counts["CANCELLED"] != 5 {
		t.Fatalf("task states %v", counts)
	}

	// Resume: a new array of exactly the 9 points without a row (the torn one included), 2 at a time.
	plan2, sub2, err := slurm.ResumeSweep(ctx, f, out, slurm.ResumeOptions{Config: slurm.Config{Concurrency: 2}, Binary: "/b", Python: "/p"})
	if err != nil {
		t.Fatal(err)
	}
	done := map[string]bool{plan.Shards[0][0].ID: true, plan.Shards[0][1].ID: true, plan.Shards[1][0].ID: true}
	var want []string
	for _, p := range points(12) {
		if !done[p.ID] {
			want = append(want, p.ID)
		}
	}
	if got := ids(plan2.Sub.Points); !reflect.DeepEqual(got, want) {
		t.Fatalf("resume points %v, want %v", got, want)
	}
	if sub2.JobID == sub.JobID || !sub2.Resume || plan2.Seq != 2 || !strings.Contains(plan2.Script, "--array=0-7%2") {
		t.Fatalf("resume submission %+v seq %d\n%s", sub2, plan2.Seq, plan2.Script)
	}
	// The resumed array finishes: every point has exactly one row, merged over both arrays' files.
	for i, sh := range plan2.Shards {
		writeRows(t, out, fmt.Sprintf("%s_%d", sub2.JobID, i), ids(sh), "ok")
		f.Set(sub2.JobID, i, "COMPLETED", 0)
	}
	st, err = slurm.Status(ctx, f, out)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != "DONE" || st.Points.Done != 12 || st.Points.Status["ok"] != 11 || st.Points.Status["failed"] != 1 {
		t.Fatalf("after resume: %s %+v", st.State, *st.Points)
	}
	if len(st.Submissions) != 2 || !st.Submissions[1].Resume {
		t.Fatalf("submissions %+v", st.Submissions)
	}
	// Nothing left: resume is a no-op.
	p3, _, err := slurm.ResumeSweep(ctx, f, out, slurm.ResumeOptions{Binary: "/b", Python: "/p"})
	if err != nil || p3 != nil {
		t.Fatalf("resume with nothing left: %v %v", p3, err)
	}
	if n := f.Count("sbatch"); n != 2 {
		t.Fatalf("%d sbatch calls, want 2", n)
	}
}

func TestResumeCustomDone(t *testing.T) {
	f := &slurmtest.Fake{}
	out := t.TempDir()
	_, sub := submitTest(t, f, out, 4, slurm.Config{})
	for i := 0; i < 4; i++ {
		f.Set(sub.JobID, i, "COMPLETED", 0)
	}
	// The caller's notion of done (e.g. the sweep reruns timeouts) replaces "has a row".
	plan, err := slurm.PrepareResume(context.Background(), f, out, slurm.ResumeOptions{Binary: "/b", Python: "/p",
		Done: func(p string) bool { return p != "b0" }})
	if err != nil || plan == nil || !reflect.DeepEqual(ids(plan.Sub.Points), []string{"b0"}) {
		t.Fatalf("%v %v", plan, err)
	}
}
