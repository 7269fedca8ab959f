package slurm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mdnctl/mdnctl/launcher"
)

// Point is one grid point of a sweep as an array task sees it: the job that measures it and the fields to copy
// into its result row.
type Point struct {
	ID   string          `json:"point"`         // stable id of the grid point; rows carry it as "point"
	Spec launcher.Spec   `json:"spec"`          // the job run through python -m mdn.runner
	Row  json.RawMessage `json:"row,omitempty"` // a JSON object merged into the row (variant hash, axis values, ...)
}

// SweepSubmission says what to run as a job array.
type SweepSubmission struct {
	Name   string  // sweep name (job name mdn-sweep-<name>)
	OutDir string  // results directory, e.g. results/<sweep>; Slurm files go to OutDir/slurm/
	Points []Point // the points to run (the caller has already removed those done, as for a local --resume)
	Config Config  // the [slurm] table

	// SweepFile, when set, is a sweep TOML file (sweep.Load): it is copied into the submission directory and each
	// task runs `mdnctl run-shard --sweep-file <copy>`, which expands the copy and runs the points of its shard
	// (matched by point id) with the sweep executor, so rows are exactly those of a local run. Point.Spec is then
	// informational. Without SweepFile each point's Spec is run through the launcher (slurm.RunShard).
	SweepFile string

	Binary   string   // mdnctl on the compute nodes (default: Config.Binary, else this executable)
	Python   string   // interpreter on the compute nodes (default: Config.Python, else launcher.FindPython)
	RepoRoot string   // exported as MDN_REPO when set
	After    []string // optional dependencies, e.g. "afterok:123"
	Env      map[string]string

	resume bool
}

// SweepPlan is a submission rendered but not yet submitted: what a dry run shows.
type SweepPlan struct {
	Sub        SweepSubmission
	Seq        int       // submission number in OutDir/slurm/jobs.json
	Dir        string    // OutDir/slurm/sub-NN
	ScriptPath string    // Dir/sweep.sbatch
	Script     string    // the sbatch script
	Shards     [][]Point // Shards[i] runs as array task i
}

// DefaultShards picks the number of array tasks: 4 per concurrent slot (some balance and resume granularity,
// little per-task start-up), at most one per point and at most MaxArrayTasks.
func DefaultShards(points, concurrency int) int {
	n := 32
	if concurrency > 0 {
		n = 4 * concurrency
	}
	if n > points {
		n = points
	}
	if n > MaxArrayTasks {
		n = MaxArrayTasks
	}
	if n < 1 {
		n = 1
	}
	return n
}

// ShardPoints deals points round-robin into n shards (point i goes to shard i mod n), so neighbouring grid points
// (often of similar cost) spread over the shards.
func ShardPoints(points []Point, n int) [][]Point {
	if n < 1 {
		n = 1
	}
	if n > len(points) {
		n = len(points)
	}
	shards := make([][]Point, n)
	for i, p := range points {
		shards[i%n] = append(shards[i%n], p)
	}
	return shards
}

// PrepareSweep validates the submission and renders the script and shards without touching the disk (dry run).
func PrepareSweep(sub SweepSubmission) (*SweepPlan, error) {
	if err := sub.Config.Validate(); err != nil {
		return nil, err
	}
	if sub.OutDir == "" {
		return nil, errors.New("slurm sweep: no output directory")
	}
	abs, err := filepath.Abs(sub.OutDir)
	if err != nil {
		return nil, fmt.Errorf("slurm sweep: %w", err)
	}
	sub.OutDir = abs
	if len(sub.Points) == 0 {
		return nil, errors.New("slurm sweep: no points to run (all done?)")
	}
	seen := map[string]bool{}
	for i, p := range sub.Points {
		if p.ID == "" {
			return nil, fmt.Errorf("slurm sweep: point %d has no id", i)
		}
		if seen[p.ID] {
			return nil, fmt.Errorf("slurm sweep: point id %q appears twice", p.ID)
		}
		seen[p.ID] = true
		if p.Spec.Kind == "" && sub.SweepFile == "" {
			return nil, fmt.Errorf("slurm sweep: point %q has no job kind", p.ID)
		}
		if len(p.Row) > 0 && bytes.TrimSpace(p.Row)[0] != '{' {
			return nil, fmt.Errorf("slurm sweep: point %q: row must be a JSON object", p.ID)
		}
	}
	if sub.SweepFile != "" {
		if sub.SweepFile, err = filepath.Abs(sub.SweepFile); err != nil {
			return nil, fmt.Errorf("slurm sweep: %w", err)
		}
		if _, err := os.Stat(sub.SweepFile); err != nil {
			return nil, fmt.Errorf("slurm sweep: sweep file: %w", err)
		}
	}
	if sub.Binary == "" {
		sub.Binary = sub.Config.Binary
	}
	if sub.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("slurm sweep: locate mdnctl: %w", err)
		}
		sub.Binary = exe
	}
	if sub.Python == "" {
		sub.Python = sub.Config.Python
	}
	if sub.Python == "" {
		py, _, err := launcher.FindPython("", sub.RepoRoot)
		if err != nil {
			return nil, fmt.Errorf("slurm sweep: %w", err)
		}
		sub.Python = py
	}
	st, _, err := LoadState(sub.OutDir)
	if err != nil {
		return nil, err
	}
	n := sub.Config.Shards
	if n == 0 {
		n = DefaultShards(len(sub.Points), sub.Config.Concurrency)
	}
	shards := ShardPoints(sub.Points, n)
	seq := st.nextSeq()
	dir := filepath.Join(SlurmDir(sub.OutDir), fmt.Sprintf("sub-%02d", seq))
	plan := &SweepPlan{Sub: sub, Seq: seq, Dir: dir, ScriptPath: filepath.Join(dir, "sweep.sbatch"), Shards: shards}
	plan.Script = renderSweepScript(plan)
	return plan, nil
}

func renderSweepScript(p *SweepPlan) string {
	s := p.Sub
	c := s.Config
	slurmDir := SlurmDir(s.OutDir)
	array := fmt.Sprintf("--array=0-%d", len(p.Shards)-1)
	if c.Concurrency > 0 {
		array += fmt.Sprintf("%%%d", c.Concurrency)
	}
	specific := []string{
		array,
		"--output=" + filepath.Join(slurmDir, "logs", "%A_%a.out"),
		"--chdir=" + s.OutDir,
	}
	dirs := directives(c, jobNameOf(c, "sweep", s.Name), specific, s.After)
	var b strings.Builder
	what := "resumes"
	if !s.resume {
		what = "runs"
	}
	scriptHeader(&b, []string{
		fmt.Sprintf("mdnctl sweep %q on Slurm: this array %s %d points in %d shards (one array task per shard).",
			s.Name, what, len(s.Points), len(p.Shards)),
		"Generated by mdnctl; submitted as: sbatch --parsable " + p.ScriptPath,
		"Each task runs its shard through the mdnctl launcher and appends one row per point to",
		"results.<jobid>_<task>.jsonl in the results directory; readers merge all results*.jsonl.",
	}, dirs)
	setupLines(&b, c)
	b.WriteString("\n")
	if s.Python != "" {
		b.WriteString("export MDN_PYTHON=" + shq(s.Python) + "\n")
	}
	if s.RepoRoot != "" {
		b.WriteString("export MDN_REPO=" + shq(s.RepoRoot) + "\n")
	}
	for _, k := range sortedKeys(s.Env) {
		b.WriteString("export " + k + "=" + shq(s.Env[k]) + "\n")
	}
	b.WriteString("task=${SLURM_ARRAY_TASK_ID:?this script runs as a Slurm array task}\n")
	b.WriteString("tag=${SLURM_ARRAY_JOB_ID}_${task}\n")
	b.WriteString("marks=" + shq(filepath.Join(slurmDir, "tasks")) + "\n")
	b.WriteString("mkdir -p \"$marks\"\n")
	b.WriteString("echo \"host=$(hostname) start=$(date +%s)\" > \"$marks/$tag.start\"\n")
	b.WriteString("# The exit record tells `mdnctl status` how the task ended after squeue has forgotten it (no sacct needed).\n")
	b.WriteString("trap 'echo $? > \"$marks/$tag.exit\"' EXIT\n")
	b.WriteString("trap 'exit 143' TERM\n")
	b.WriteString("shard=" + shq(filepath.Join(p.Dir, "shards")) + "/shard-$(printf %04d \"$task\").jsonl\n")
	b.WriteString("out=" + shq(s.OutDir) + "/results.$tag.jsonl\n")
	line := shq(s.Binary) + ` run-shard --shard-file "$shard" --out "$out"`
	if s.SweepFile != "" {
		line += " --sweep-file " + shq(p.sweepCopy())
	}
	if c.GPUs > 0 {
		line += " --gpus slurm" // one worker per GPU Slurm gave the task (CUDA_VISIBLE_DEVICES)
	} else {
		line += " --gpus cpu"
	}
	if c.PointTimeout != "" {
		line += " --timeout " + shq(c.PointTimeout)
	}
	// In the background and waited for, so a TERM from scancel reaches the trap at once, and not exec'd, so the
	// EXIT trap runs after the shard ends.
	b.WriteString(line + " &\nwait $!\n")
	return b.String()
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// DryRun writes what Submit would do: the sbatch call, the shards, and the script.
func (p *SweepPlan) DryRun(w io.Writer) error {
	conc := "no limit"
	if c := p.Sub.Config.Concurrency; c > 0 {
		conc = fmt.Sprintf("%d at a time", c)
	}
	sizes := make([]string, len(p.Shards))
	for i, s := range p.Shards {
		sizes[i] = fmt.Sprint(len(s))
	}
	_, err := fmt.Fprintf(w, "# dry run: would write %s and run: sbatch --parsable %s\n# %d points in %d array tasks (%s); points per task: %s\n%s",
		p.Dir, p.ScriptPath, len(p.Sub.Points), len(p.Shards), conc, strings.Join(sizes, " "), p.Script)
	return err
}

func (p *SweepPlan) sweepCopy() string { return filepath.Join(p.Dir, "sweep.toml") }

// Write puts the script and the shard files (and the sweep file's copy) into the plan's directory.
func (p *SweepPlan) Write() error {
	for _, d := range []string{filepath.Join(p.Dir, "shards"), filepath.Join(SlurmDir(p.Sub.OutDir), "logs"),
		filepath.Join(SlurmDir(p.Sub.OutDir), "tasks")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("slurm sweep: %w", err)
		}
	}
	for i, sh := range p.Shards {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		for _, pt := range sh {
			if pt.Spec.V == 0 {
				pt.Spec.V = launcher.ProtocolVersion
			}
			if pt.Spec.ID == "" {
				pt.Spec.ID = pt.ID
			}
			if err := enc.Encode(pt); err != nil {
				return fmt.Errorf("slurm sweep: encode point %s: %w", pt.ID, err)
			}
		}
		if err := writeFileAtomic(ShardFile(p.Dir, i), b.Bytes()); err != nil {
			return err
		}
	}
	if p.Sub.SweepFile != "" {
		b, err := os.ReadFile(p.Sub.SweepFile)
		if err != nil {
			return fmt.Errorf("slurm sweep: %w", err)
		}
		if err := writeFileAtomic(p.sweepCopy(), b); err != nil {
			return err
		}
	}
	if err := writeFileAtomic(p.ScriptPath, []byte(p.Script)); err != nil {
		return err
	}
	return os.Chmod(p.ScriptPath, 0o755)
}

// ShardFile is the path of array task i's shard in a submission directory.
func ShardFile(subDir string, i int) string {
	return filepath.Join(subDir, "shards", fmt.Sprintf("shard-%04d.jsonl", i))
}

// SubmitSweep writes the plan and submits it with sbatch --parsable; the job id is recorded in
// OutDir/slurm/jobs.json. It refuses while an earlier submission of the same directory is still queued or running.
func SubmitSweep(ctx context.Context, r Runner, sub SweepSubmission) (*SweepPlan, Submission, error) {
	plan, err := PrepareSweep(sub)
	if err != nil {
		return nil, Submission{}, err
	}
	s, err := plan.Submit(ctx, r)
	return plan, s, err
}

// Submit writes the plan's files and submits its script.
func (p *SweepPlan) Submit(ctx context.Context, r Runner) (Submission, error) {
	if err := refuseIfActive(ctx, r, p.Sub.OutDir); err != nil {
		return Submission{}, err
	}
	if err := p.Write(); err != nil {
		return Submission{}, err
	}
	id, err := sbatch(ctx, r, p.ScriptPath)
	if err != nil {
		return Submission{}, err
	}
	s := Submission{Seq: p.Seq, JobID: id, Kind: "sweep", Name: p.Sub.Name, Dir: p.Dir, Script: p.ScriptPath,
		SweepFile: p.Sub.SweepFile,
		Tasks:     len(p.Shards), Points: len(p.Sub.Points), Concurrency: p.Sub.Config.Concurrency,
		Resume: p.Sub.resume, SubmittedAt: time.Now().UTC()}
	return s, record(p.Sub.OutDir, s)
}

func record(runDir string, s Submission) error {
	st, _, err := LoadState(runDir)
	if err != nil {
		return err
	}
	st.Dir = runDir
	st.Submissions = append(st.Submissions, s)
	if err := st.save(runDir); err != nil {
		return fmt.Errorf("job %s was submitted but not recorded (cancel it with scancel %s): %w", s.JobID, s.JobID, err)
	}
	return nil
}

// sbatch submits a script and returns the job id (sbatch --parsable prints "id" or "id;cluster").
func sbatch(ctx context.Context, r Runner, script string) (string, error) {
	out, err := r.Run(ctx, "sbatch", "--parsable", script)
	if err != nil {
		return "", fmt.Errorf("submit %s: %w", script, err)
	}
	id := strings.TrimSpace(strings.SplitN(strings.TrimSpace(string(out)), ";", 2)[0])
	if id == "" || strings.Trim(id, "0123456789") != "" {
		return "", fmt.Errorf("submit %s: sbatch printed %q, expected a job id", script, strings.TrimSpace(string(out)))
	}
	return id, nil
}

// LoadPoints reads back every point ever submitted for OutDir (all submissions' shards; a point listed twice,
// as after a resume, counts once), in submission order.
func LoadPoints(outDir string) ([]Point, error) {
	st, ok, err := LoadState(outDir)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s: no Slurm submission recorded here (no %s)", outDir, statePath(outDir))
	}
	var pts []Point
	seen := map[string]bool{}
	for _, s := range st.Submissions {
		if s.Kind != "sweep" {
			continue
		}
		shards := make([][]Point, s.Tasks)
		total := 0
		for i := 0; i < s.Tasks; i++ {
			b, err := os.ReadFile(ShardFile(s.Dir, i))
			if err != nil {
				return nil, fmt.Errorf("resume: %w", err)
			}
			if shards[i], err = decodeShard(b, ShardFile(s.Dir, i)); err != nil {
				return nil, err
			}
			total += len(shards[i])
		}
		// Undo ShardPoints (point k went to shard k mod n, position k div n) to get the submission order back.
		for k := 0; k < total; k++ {
			sh := shards[k%s.Tasks]
			if k/s.Tasks >= len(sh) {
				return nil, fmt.Errorf("resume: shards of %s are not as mdnctl wrote them", s.Dir)
			}
			if p := sh[k/s.Tasks]; !seen[p.ID] {
				seen[p.ID] = true
				pts = append(pts, p)
			}
		}
	}
	return pts, nil
}

// ReadShard reads a shard file (JSON lines of Point).
func ReadShard(path string) ([]Point, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read shard: %w", err)
	}
	return decodeShard(b, path)
}

func decodeShard(b []byte, name string) ([]Point, error) {
	var pts []Point
	for n, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var p Point
		if err := json.Unmarshal(line, &p); err != nil {
			return nil, fmt.Errorf("%s:%d: not a shard point: %v", name, n+1, err)
		}
		pts = append(pts, p)
	}
	return pts, nil
}

// ResumeOptions control ResumeSweep.
type ResumeOptions struct {
	Config Config // the [slurm] table for the new array (may differ from the first submission's)
	Binary string
	Python string
	// Done reports whether a point needs no rerun. Default: it has a row in OutDir (DonePoints), which is what a
	// local --resume does.
	Done func(point string) bool
}

// ResumeSweep submits, as a new array, the points of OutDir's earlier submissions that have no row yet.
// It refuses while a submission is still queued or running (cancel or wait first). It returns a nil plan and
// no error when nothing is left to run.
func ResumeSweep(ctx context.Context, r Runner, outDir string, opts ResumeOptions) (*SweepPlan, Submission, error) {
	plan, err := PrepareResume(ctx, r, outDir, opts)
	if err != nil || plan == nil {
		return nil, Submission{}, err
	}
	s, err := plan.Submit(ctx, r)
	return plan, s, err
}

// PrepareResume is ResumeSweep without the submission (dry run).
func PrepareResume(ctx context.Context, r Runner, outDir string, opts ResumeOptions) (*SweepPlan, error) {
	abs, err := filepath.Abs(outDir)
	if err != nil {
		return nil, err
	}
	st, _, err := LoadState(abs)
	if err != nil {
		return nil, err
	}
	all, err := LoadPoints(abs)
	if err != nil {
		return nil, err
	}
	done := opts.Done
	if done == nil {
		d, err := DonePoints(abs)
		if err != nil {
			return nil, err
		}
		done = func(p string) bool { _, ok := d[p]; return ok }
	}
	var todo []Point
	for _, p := range all {
		if !done(p.ID) {
			todo = append(todo, p)
		}
	}
	if len(todo) == 0 {
		return nil, nil
	}
	name, sweepFile := "", ""
	for _, s := range st.Submissions {
		if s.Kind == "sweep" {
			name, sweepFile = s.Name, ""
			if s.SweepFile != "" {
				sweepFile = filepath.Join(s.Dir, "sweep.toml") // the copy the earlier tasks expanded
			}
		}
	}
	sub := SweepSubmission{Name: name, OutDir: abs, Points: todo, Config: opts.Config, Binary: opts.Binary,
		Python: opts.Python, SweepFile: sweepFile, resume: true}
	if r != nil {
		if err := refuseIfActive(ctx, r, abs); err != nil {
			return nil, err
		}
	}
	return PrepareSweep(sub)
}
