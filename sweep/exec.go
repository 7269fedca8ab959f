package sweep

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mdnctl/mdnctl/launcher"
	"github.com/mdnctl/mdnctl/results"
)

// Worker runs jobs one after another: a warm launcher.Worker, or a fake in tests.
type Worker interface {
	Do(ctx context.Context, spec launcher.Spec) (*launcher.Outcome, error)
	Close() error
}

// StartFunc starts a worker for a slot; the worker's stderr goes to stderr.
type StartFunc func(slot Slot, stderr io.Writer) (Worker, error)

// LauncherStart starts real runner children (python -m mdn.runner) with the slot's environment.
func LauncherStart(base launcher.Options) StartFunc {
	return func(slot Slot, stderr io.Writer) (Worker, error) {
		o := base
		o.Env = append(append([]string(nil), base.Env...), slot.Env...)
		o.Timeout = 0 // per-call deadlines come from the context
		o.Stderr = stderr
		return launcher.Start(o)
	}
}

// Sink receives finished rows (a results.Writer).
type Sink interface {
	Append(row any) error
}

// Options configure Execute.
type Options struct {
	Slots          []Slot
	Start          StartFunc
	Sink           Sink
	Timeout        time.Duration // per point; the file's timeout when zero
	StartupTimeout time.Duration // for a worker's probe job (spawn and imports); default 5 minutes
	Progress       Progress      // optional
	LogDir         string        // optional: each slot's worker stderr is appended to LogDir/<slot>.log
	Version        string        // mdnctl version recorded in rows
	StopAfter      time.Time     // zero: none; else no point starts after this time (points in flight finish)
	SignalGrace    time.Duration // how long a runner killed by SIGTERM/SIGINT waits for our own cancel (0: 2 s)
	Now            func() time.Time
}

// Progress is told what happens; calls come from several goroutines.
type Progress interface {
	Begin(total, skipped int)
	WorkerReady(slot Slot, info WorkerInfo)
	WorkerFailed(slot Slot, err error)
	PointDone(slot Slot, p Point, row results.Row)
	End(s *Summary)
}

// WorkerInfo is what a worker's probe reported, with the measured start-up overhead.
type WorkerInfo struct {
	DeviceName string         `json:"device_name"`
	Versions   map[string]any `json:"versions"`
	SpawnS     float64        `json:"spawn_s"`  // process start to the probe job's start (Python start-up)
	ImportS    float64        `json:"import_s"` // the probe's imports (torch, triton, the op registry)
	ProbeS     float64        `json:"probe_s"`  // the whole probe, as seen from Go
	Host       string         `json:"host"`
}

// Summary of one execution.
type Summary struct {
	Total    int            `json:"total"` // points asked for
	Skipped  int            `json:"skipped"`
	Ran      int            `json:"ran"`
	Statuses map[string]int `json:"statuses"`
	Wall     float64        `json:"wall_s"`
	Workers  []WorkerInfo   `json:"workers"`
	Restarts int            `json:"worker_restarts"`
	Overhead OverheadStats  `json:"overhead"`
	Rows     []results.Row  `json:"-"`
}

// OverheadStats summarise where the wall time of points went.
type OverheadStats struct {
	SpawnS       float64 `json:"spawn_s_median"`     // per worker start
	ImportS      float64 `json:"import_s_median"`    // per worker start
	LauncherMS   float64 `json:"launcher_ms_median"` // per warm point: wall minus the job's own time
	LauncherPct  float64 `json:"launcher_pct_median"`
	WarmWallS    float64 `json:"warm_point_wall_s_median"`
	WarmCheckS   float64 `json:"warm_point_check_s_median"`      // the correctness gate
	WarmFirstS   float64 `json:"warm_point_first_call_s_median"` // compile/autotune, or the cache hit
	WarmTimedPct float64 `json:"warm_point_timed_pct_median"`    // share of a warm point's wall in the timed loop
	// The worker caches gate verdicts (mdn.bench.check): of the warm points' gates, how many were cached, and
	// the median time of those that ran.
	WarmChecks       int     `json:"warm_point_checks"`
	WarmChecksCached int     `json:"warm_point_checks_cached"`
	WarmCheckFreshS  float64 `json:"warm_point_check_fresh_s_median"`
	// The points that took longest (any status), slowest first: on a fresh machine compiles and autotuning
	// (fla's, minutes per kernel and shape) can outweigh everything else, and this says where.
	Slowest []SlowPoint `json:"slowest_points,omitempty"`
}

// SlowPoint is one of the slowest points of a run: its wall time and the parts the job reported.
type SlowPoint struct {
	Point      string  `json:"point"`
	Label      string  `json:"label"` // op, mode and shape, e.g. "kda fwd B16 T2048 H6 K256 V512"
	Status     string  `json:"status"`
	WallS      float64 `json:"wall_s"`
	CheckS     float64 `json:"check_s"`      // the correctness gate (0 when cached or absent)
	FirstCallS float64 `json:"first_call_s"` // compile / autotune at the timed shape
	Cold       bool    `json:"cold"`         // the worker's first point (its start and imports included)
}

// slowestN is how many points the summary lists by wall time.
const slowestN = 3

func slowPoint(p Point, row results.Row) (SlowPoint, bool) {
	oh, ok := row["overhead"].(map[string]any)
	if !ok {
		return SlowPoint{}, false
	}
	w, ok := oh["wall_s"].(float64)
	if !ok {
		return SlowPoint{}, false
	}
	sp := SlowPoint{Point: p.ID, Status: results.Str(row, "status"), WallS: w, Cold: oh["cold"] == true}
	if jt, ok := row["job_timing"].(map[string]any); ok {
		sp.CheckS, _ = jt["check_s"].(float64)
		sp.FirstCallS, _ = jt["first_call_s"].(float64)
	}
	var parts []string
	for _, k := range []string{"op", "model", "mode", "B", "T", "H", "K", "V", "seq_len", "d_model"} {
		if v, ok := p.Values[k]; ok {
			if k == "op" || k == "model" || k == "mode" {
				parts = append(parts, fmt.Sprint(v))
			} else {
				parts = append(parts, fmt.Sprintf("%s%v", k, v))
			}
		}
	}
	sp.Label = strings.Join(parts, " ")
	return sp, true
}

// keepSlowest inserts sp into the slowest-first list, keeping at most slowestN.
func keepSlowest(list []SlowPoint, sp SlowPoint) []SlowPoint {
	i := sort.Search(len(list), func(i int) bool { return list[i].WallS < sp.WallS })
	list = append(list, SlowPoint{})
	copy(list[i+1:], list[i:])
	list[i] = sp
	if len(list) > slowestN {
		list = list[:slowestN]
	}
	return list
}

// ErrNoWorker means no slot could start a worker.
var ErrNoWorker = errors.New("no worker could start")

// maxStartFailures in a row retire a slot.
const maxStartFailures = 2

// Execute runs points on one warm worker per slot. A crash, timeout, protocol error or failed job becomes a row
// (failed/timeout/incorrect/unavailable) and the worker is restarted; the sweep goes on. Rows go to the sink as
// each point ends. On cancellation the points in flight leave no row (they are not done) and the context's
// error is returned; an error of the sink stops everything.
func Execute(ctx context.Context, f *File, points []Point, skipped int, opts Options) (*Summary, error) {
	if len(opts.Slots) == 0 {
		return nil, errors.New("sweep: no slots to run on")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Timeout <= 0 {
		opts.Timeout = f.Timeout
	}
	if opts.StartupTimeout <= 0 {
		opts.StartupTimeout = 5 * time.Minute
	}
	sum := &Summary{Total: len(points) + skipped, Skipped: skipped, Statuses: map[string]int{}}
	if opts.Progress != nil {
		opts.Progress.Begin(len(points)+skipped, skipped)
	}
	start := opts.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q := newWorkQueue(points)
	go func() {
		<-ctx.Done()
		q.close()
	}()
	var (
		mu       sync.Mutex
		fatal    error
		retired  int
		warmWall []float64
		launchMS []float64
		launchPc []float64
		checkS   []float64
		freshS   []float64
		cachedN  int
		firstS   []float64
		timedPct []float64
		slowest  []SlowPoint
	)
	setFatal := func(err error) {
		mu.Lock()
		if fatal == nil {
			fatal = err
		}
		mu.Unlock()
		cancel()
	}
	var wg sync.WaitGroup
	for _, slot := range opts.Slots {
		wg.Add(1)
		go func(slot Slot) {
			defer wg.Done()
			r := &slotRunner{f: f, slot: slot, opts: opts, log: newLineTail(200)}
			defer func() {
				r.close()
				mu.Lock()
				sum.Workers = append(sum.Workers, r.infos...)
				sum.Restarts += r.restarts
				mu.Unlock()
			}()
			if opts.LogDir != "" {
				r.openLog()
			}
			for {
				if !opts.StopAfter.IsZero() && opts.Now().After(opts.StopAfter) {
					q.close()
					return
				}
				p, ok := q.pop(slot.Name)
				if !ok {
					return
				}
				row, ok := r.run(ctx, p)
				if !ok && r.requeue && ctx.Err() == nil {
					r.requeue = false
					q.done(&p) // back to the queue; this slot starts a fresh worker and goes on
					continue
				}
				if !ok {
					q.done(&p) // not done: back to the queue for another slot (or a later resume)
					if ctx.Err() != nil {
						return
					}
					mu.Lock()
					retired++
					all := retired == len(opts.Slots)
					mu.Unlock()
					if all {
						setFatal(fmt.Errorf("%w: %v", ErrNoWorker, r.startErr))
					}
					return
				}
				if err := opts.Sink.Append(row); err != nil {
					q.done(nil)
					setFatal(fmt.Errorf("sweep: record point %s: %w", p.ID, err))
					return
				}
				q.done(nil)
				mu.Lock()
				sum.Ran++
				st := results.Str(row, "status")
				sum.Statuses[st]++
				sum.Rows = append(sum.Rows, row)
				if sp, ok := slowPoint(p, row); ok {
					slowest = keepSlowest(slowest, sp)
				}
				if oh, ok := row["overhead"].(map[string]any); ok && oh["cold"] == false && st == results.StatusOK {
					if w, ok := oh["wall_s"].(float64); ok {
						warmWall = append(warmWall, w)
						if j, ok := oh["job_s"].(float64); ok {
							launchMS = append(launchMS, (w-j)*1e3)
							if w > 0 {
								launchPc = append(launchPc, 100*(w-j)/w)
							}
						}
						if jt, ok := row["job_timing"].(map[string]any); ok {
							if c, ok := jt["check_s"].(float64); ok {
								checkS = append(checkS, c)
								if jt["check_cached"] == true {
									cachedN++
								} else {
									freshS = append(freshS, c)
								}
							}
							if c, ok := jt["first_call_s"].(float64); ok {
								firstS = append(firstS, c)
							}
						}
						if b, ok := oh["timed_s"].(float64); ok && w > 0 {
							timedPct = append(timedPct, 100*b/w)
						}
					}
				}
				mu.Unlock()
				if opts.Progress != nil {
					opts.Progress.PointDone(slot, p, row)
				}
			}
		}(slot)
	}
	wg.Wait()
	sum.Wall = opts.Now().Sub(start).Seconds()
	var spawn, imp []float64
	for _, w := range sum.Workers {
		spawn = append(spawn, w.SpawnS)
		imp = append(imp, w.ImportS)
	}
	sum.Overhead = OverheadStats{SpawnS: median(spawn), ImportS: median(imp), LauncherMS: median(launchMS),
		LauncherPct: median(launchPc), WarmWallS: median(warmWall), WarmCheckS: median(checkS),
		WarmFirstS: median(firstS), WarmTimedPct: median(timedPct), WarmChecks: len(checkS), WarmChecksCached: cachedN,
		WarmCheckFreshS: median(freshS), Slowest: slowest}
	if opts.Progress != nil {
		opts.Progress.End(sum)
	}
	if fatal != nil {
		return sum, fatal
	}
	if err := ctx.Err(); err != nil {
		return sum, err
	}
	return sum, nil
}

// slotRunner owns one slot's worker.
type slotRunner struct {
	f         *File
	slot      Slot
	opts      Options
	w         Worker
	info      WorkerInfo
	infos     []WorkerInfo
	cold      bool // the next point is the first on this worker
	restarts  int
	starts    int
	failures  int // consecutive start failures
	startErr  error
	log       *lineTail
	logWriter io.WriteCloser
	requeue   bool            // run gave its point back to the queue (killed from outside once): go on
	signalled map[string]bool // points whose runner was killed by a stop signal from outside once
}

func (r *slotRunner) close() {
	if r.w != nil {
		_ = r.w.Close()
		r.w = nil
	}
	if r.logWriter != nil {
		_ = r.logWriter.Close()
	}
}

func (r *slotRunner) stderr() io.Writer {
	if r.logWriter != nil {
		return io.MultiWriter(r.log, r.logWriter)
	}
	return r.log
}

// ensureWorker starts a worker and probes it. It returns false after maxStartFailures failures in a row.
func (r *slotRunner) ensureWorker(ctx context.Context) bool {
	for r.w == nil {
		if r.failures >= maxStartFailures {
			return false
		}
		if ctx.Err() != nil {
			return false
		}
		t0 := r.opts.Now()
		w, err := r.opts.Start(r.slot, r.stderr())
		if err == nil {
			var info WorkerInfo
			info, err = r.probe(ctx, w, t0)
			if err == nil {
				r.w, r.info, r.cold = w, info, true
				r.infos = append(r.infos, info)
				r.failures = 0
				if r.starts > 0 {
					r.restarts++
				}
				r.starts++
				if r.opts.Progress != nil {
					r.opts.Progress.WorkerReady(r.slot, info)
				}
				return true
			}
			_ = w.Close()
		}
		if ctx.Err() != nil {
			return false
		}
		r.failures++
		r.startErr = fmt.Errorf("%s: %w", r.slot.Name, err)
		if r.opts.Progress != nil {
			r.opts.Progress.WorkerFailed(r.slot, r.startErr)
		}
	}
	return true
}

func (r *slotRunner) probe(ctx context.Context, w Worker, t0 time.Time) (WorkerInfo, error) {
	pctx, cancel := context.WithTimeout(ctx, r.opts.StartupTimeout)
	defer cancel()
	out, err := w.Do(pctx, launcher.Spec{ID: "probe-" + r.slot.Name, Kind: r.f.Job, Params: ProbeParams(r.slot)})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return WorkerInfo{}, fmt.Errorf("worker probe timed out after %s%s", r.opts.StartupTimeout, tailSuffix(r.log.since(0)))
		}
		var je *launcher.JobError
		if errors.As(err, &je) {
			return WorkerInfo{}, fmt.Errorf("worker probe failed (%s): %s", je.Kind, je.Message)
		}
		return WorkerInfo{}, fmt.Errorf("worker probe: %w", err)
	}
	var res struct {
		DeviceName string         `json:"device_name"`
		Versions   map[string]any `json:"versions"`
		ImportS    float64        `json:"import_s"`
		JobStartT  float64        `json:"job_start_t"` // Unix seconds when the probe job began (Python's clock)
	}
	if err := out.DecodeResult(&res); err != nil {
		return WorkerInfo{}, fmt.Errorf("worker probe result: %w", err)
	}
	info := WorkerInfo{DeviceName: res.DeviceName, Versions: res.Versions, ImportS: res.ImportS,
		ProbeS: r.opts.Now().Sub(t0).Seconds(), Host: out.Host}
	if res.JobStartT > 0 {
		info.SpawnS = res.JobStartT - float64(t0.UnixNano())/1e9
		if info.SpawnS < 0 {
			info.SpawnS = 0
		}
	}
	return info, nil
}

// run runs one point and returns its row; ok is false when no worker could start or the sweep was cancelled.
func (r *slotRunner) run(ctx context.Context, p Point) (results.Row, bool) {
	if !r.ensureWorker(ctx) {
		return nil, false
	}
	params := JobParams(r.f, p, r.slot)
	mark := r.log.mark()
	cold := r.cold
	r.cold = false
	pctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	t0 := r.opts.Now()
	out, err := r.w.Do(pctx, launcher.Spec{ID: p.ID, Kind: r.f.Job, Params: params})
	wall := r.opts.Now().Sub(t0).Seconds()
	timedOut := errors.Is(pctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
	cancel()
	if ctx.Err() != nil { // cancelled: no row, the point stays undone
		r.kill()
		return nil, false
	}
	row := r.baseRow(p, params)
	overhead := map[string]any{"cold": cold, "wall_s": round6(wall)}
	if cold {
		overhead["spawn_s"] = round6(r.info.SpawnS)
		overhead["import_s"] = round6(r.info.ImportS)
		overhead["probe_s"] = round6(r.info.ProbeS)
	}
	row["overhead"] = overhead
	if out != nil {
		row["host"] = out.Host
		for _, m := range out.Metrics { // the job's early reports (environment, gate errors) survive a failure
			mergeJSON(row, m, p.Values)
		}
	}
	status := results.StatusOK
	restart := false
	var je *launcher.JobError
	switch {
	case err == nil:
		mergeJSON(row, out.Result, p.Values)
	case timedOut:
		status, restart = results.StatusTimeout, true
		row["reason"] = fmt.Sprintf("timed out after %s", r.opts.Timeout)
	case errors.As(err, &je):
		row["error_kind"] = je.Kind
		row["reason"] = je.Message
		switch je.Kind {
		case "incorrect":
			status = results.StatusIncorrect
		case "unavailable":
			status = results.StatusUnavailable
		case "timeout":
			status = results.StatusTimeout
		default:
			status = results.StatusFailed
			// oom and internal errors may leave the device in a bad state: start afresh.
			restart = je.Kind == "oom" || je.Kind == "internal" || je.Kind == "protocol"
		}
	default: // crash, protocol error, stdout closed: the worker is gone
		if launcher.KilledByStopSignal(err) {
			// Slurm's scancel (or a terminal's Ctrl-C) signals the job's processes: the runner may die of it a
			// moment before our own context is cancelled, or alone (Slurm signals by cgroup). That is an
			// interruption, not a failed point: no row. Once per point the point goes back to the queue and this
			// slot goes on with a fresh worker; a second such death is recorded as a failure.
			if launcher.CancelledWithin(ctx, r.opts.SignalGrace) {
				r.kill()
				return nil, false
			}
			if r.signalled == nil {
				r.signalled = map[string]bool{}
			}
			if !r.signalled[p.ID] {
				r.signalled[p.ID] = true
				fmt.Fprintf(r.stderr(), "mdnctl: point %s: %v; the point goes back to the queue\n", p.ID, err)
				r.kill()
				r.requeue = true
				return nil, false
			}
		}
		status, restart = results.StatusFailed, true
		row["error_kind"] = crashKind(err)
		row["reason"] = firstLine(err.Error())
	}
	if status != results.StatusOK {
		if tail := r.log.since(mark); len(tail) > 0 {
			row["stderr_tail"] = tail
		}
	}
	if j, ok := jobSeconds(row); ok {
		overhead["job_s"] = j
		if t, ok := row["timed_s"].(float64); ok {
			overhead["timed_s"] = t
		}
	}
	row["status"] = status
	if restart {
		r.kill()
	}
	return row, true
}

func (r *slotRunner) kill() {
	if r.w != nil {
		_ = r.w.Close()
		r.w = nil
	}
}

// baseRow holds what Go knows of a point before the job answers.
func (r *slotRunner) baseRow(p Point, params map[string]any) results.Row {
	row := results.Row{"sweep": r.f.Name, "point": p.ID, "variant": p.Variant, "job": r.f.Job}
	for k, v := range p.Values {
		row[k] = v
	}
	row["launch"] = r.f.LaunchSpec(p.Values)
	row["slot"] = r.slot.Name
	if r.slot.GPU != "" {
		row["gpu"] = r.slot.GPU
	}
	row["device"] = r.info.DeviceName
	versions := map[string]any{}
	for k, v := range r.info.Versions {
		versions[k] = v
	}
	if r.opts.Version != "" {
		versions["mdnctl"] = r.opts.Version
	}
	row["versions"] = versions
	row["time"] = r.opts.Now().UTC().Format(time.RFC3339)
	row["params"] = params
	return row
}

// reservedKeys are row keys a job's result or metric may not overwrite.
var reservedKeys = map[string]bool{"sweep": true, "point": true, "variant": true, "status": true, "job": true,
	"launch": true, "slot": true, "gpu": true, "params": true, "time": true, "overhead": true}

// mergeJSON copies a job object's keys into the row: device_name becomes device; versions merge; a key that
// would overwrite a field of the point or a reserved key is kept under "job_<key>".
func mergeJSON(row results.Row, raw json.RawMessage, values map[string]any) {
	if len(raw) == 0 {
		return
	}
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return
	}
	for k, v := range m {
		switch {
		case k == "device_name":
			if s, ok := v.(string); ok && s != "" {
				row["device"] = s
			}
		case k == "versions":
			if vm, ok := v.(map[string]any); ok {
				dst, _ := row["versions"].(map[string]any)
				if dst == nil {
					dst = map[string]any{}
					row["versions"] = dst
				}
				for kk, vv := range vm {
					dst[kk] = vv
				}
			}
		case reservedKeys[k]:
			row["job_"+k] = v
		default:
			if _, isValue := values[k]; isValue {
				row["job_"+k] = v
				continue
			}
			if _, isField := LookupField(k); isField || k == RepeatField {
				row["job_"+k] = v
				continue
			}
			row[k] = v
		}
	}
}

func jobSeconds(row results.Row) (float64, bool) {
	if jt, ok := row["job_timing"].(map[string]any); ok {
		if j, ok := jt["job_s"].(float64); ok {
			return j, true
		}
	}
	return 0, false
}

func crashKind(err error) string {
	var ee *launcher.ExitError
	var pe *launcher.ProtocolError
	var me *launcher.MissingEndError
	switch {
	case errors.As(err, &ee):
		return "crash"
	case errors.As(err, &pe):
		return "protocol"
	case errors.As(err, &me):
		return "crash"
	}
	return "internal"
}

func firstLine(s string) string {
	if i := strings.Index(s, "\n--- last stderr lines ---"); i >= 0 {
		s = s[:i]
	}
	return s
}

func tailSuffix(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return "\n" + strings.Join(lines, "\n")
}

func round6(x float64) float64 {
	return float64(int64(x*1e6+0.5)) / 1e6
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
