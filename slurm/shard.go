package slurm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mdnctl/mdnctl/launcher"
)

// ShardOptions say how an array task (or a torchrun rank) runs its shard: `mdnctl run-shard`.
type ShardOptions struct {
	ShardFile   string // JSON lines of Point
	Out         string // rows file; {rank} and {job} are replaced (RANK and SLURM_JOB_ID)
	Events      string // optional: every protocol event, one JSON line each ({rank}, {job} replaced)
	Metrics     string // optional: each metric event's data, one line each; written by rank 0 only
	Launcher    launcher.Options
	BuildRow    RowBuilder // default DefaultRow
	Log         io.Writer  // one line per point; default io.Discard
	PerGPU      bool       // with several devices in CUDA_VISIBLE_DEVICES, one worker per device
	Environment func(string) string
}

// RowBuilder turns a point and its outcome into the row appended to the results file. err is the launcher's
// error (nil, *launcher.JobError, *launcher.TimeoutError, *launcher.ExitError, ...).
type RowBuilder func(p Point, out *launcher.Outcome, err error) (map[string]any, error)

// ShardSummary counts what a shard did.
type ShardSummary struct {
	Points  int            `json:"points"`
	Skipped int            `json:"skipped"` // already had a row in Out (a requeued task)
	Status  map[string]int `json:"status"`
}

// OK reports whether every point that ran ended ok.
func (s ShardSummary) OK() bool {
	for k, v := range s.Status {
		if k != "ok" && v > 0 {
			return false
		}
	}
	return true
}

// StatusOf maps a launcher error to a row status: ok, failed, incorrect, unavailable, timeout, oom, nan.
func StatusOf(err error) string {
	if err == nil {
		return "ok"
	}
	var je *launcher.JobError
	if errors.As(err, &je) {
		switch je.Kind {
		case "incorrect", "unavailable", "timeout", "oom", "nan":
			return je.Kind
		}
		return "failed"
	}
	var te *launcher.TimeoutError
	if errors.As(err, &te) {
		return "timeout"
	}
	return "failed"
}

// DefaultRow: the point's own row fields, then point, status, result, error (+ error_kind, stderr_tail),
// elapsed_s, host, slurm_job and finished_at.
func DefaultRow(p Point, out *launcher.Outcome, err error) (map[string]any, error) {
	row := map[string]any{}
	if len(p.Row) > 0 {
		if e := json.Unmarshal(p.Row, &row); e != nil {
			return nil, fmt.Errorf("point %s: row is not a JSON object: %w", p.ID, e)
		}
	}
	row["point"] = p.ID
	row["status"] = StatusOf(err)
	if out != nil {
		if out.Result != nil {
			row["result"] = out.Result
		}
		row["elapsed_s"] = out.Elapsed.Seconds()
		if out.Host != "" {
			row["host"] = out.Host
		}
	}
	if err != nil {
		row["error"] = err.Error() // one line (launcher errors quote the last stderr line)
		var je *launcher.JobError
		var xe *launcher.ExitError
		var me *launcher.MissingEndError
		switch {
		case errors.As(err, &je):
			row["error"] = je.Message
			row["error_kind"] = je.Kind
		case StatusOf(err) == "timeout":
			row["error_kind"] = "timeout"
		case errors.As(err, &xe), errors.As(err, &me):
			row["error_kind"] = "crash"
		default:
			row["error_kind"] = "internal"
		}
		var tl launcher.Tailer
		if errors.As(err, &tl) && len(tl.Tail()) > 0 {
			row["stderr_tail"] = tl.Tail()
		}
	}
	if job := os.Getenv("SLURM_ARRAY_JOB_ID"); job != "" {
		row["slurm_job"] = job + "_" + os.Getenv("SLURM_ARRAY_TASK_ID")
	} else if job := os.Getenv("SLURM_JOB_ID"); job != "" {
		row["slurm_job"] = job
	}
	if r, err := strconv.Atoi(os.Getenv("RANK")); err == nil {
		row["rank"] = r
	}
	row["finished_at"] = time.Now().UTC().Format(time.RFC3339Nano)
	return row, nil
}

// ExpandRankPath fills {rank} (RANK, default 0) and {job} (SLURM_JOB_ID, default "local") into a path.
func ExpandRankPath(p string, getenv func(string) string) string {
	rank, job := getenv("RANK"), getenv("SLURM_JOB_ID")
	if rank == "" {
		rank = "0"
	}
	if job == "" {
		job = "local"
	}
	return strings.NewReplacer("{rank}", rank, "{job}", job).Replace(p)
}

// RunShard runs every point of the shard file that has no row in Out yet, one after another in a warm worker
// (a crash, timeout or protocol error costs a fresh worker, never the rest of the shard), and appends one row per
// point. A point's failure is a row, not an error: the error return is for the shard itself (unreadable files,
// a results file that cannot be written, cancellation).
func RunShard(ctx context.Context, o ShardOptions) (ShardSummary, error) {
	getenv := o.Environment
	if getenv == nil {
		getenv = os.Getenv
	}
	if o.BuildRow == nil {
		o.BuildRow = DefaultRow
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	sum := ShardSummary{Status: map[string]int{}}
	b, err := os.ReadFile(o.ShardFile)
	if err != nil {
		return sum, fmt.Errorf("run shard: %w", err)
	}
	pts, err := decodeShard(b, o.ShardFile)
	if err != nil {
		return sum, err
	}
	out := ExpandRankPath(o.Out, getenv)
	done := map[string]bool{}
	if fileExists(out) {
		rows, err := readRowFile(out)
		if err != nil {
			return sum, err
		}
		for _, r := range rows {
			done[RowString(r, "point")] = true
		}
	}
	var todo []Point
	for _, p := range pts {
		if done[p.ID] {
			sum.Skipped++
			continue
		}
		todo = append(todo, p)
	}
	sum.Points = len(pts)
	rw, err := OpenRows(out)
	if err != nil {
		return sum, err
	}
	defer rw.Close()

	var evw, mw *RowWriter
	if o.Events != "" {
		if evw, err = OpenRows(ExpandRankPath(o.Events, getenv)); err != nil {
			return sum, err
		}
		defer evw.Close()
	}
	if r := getenv("RANK"); o.Metrics != "" && (r == "" || r == "0") {
		if mw, err = OpenRows(o.Metrics); err != nil {
			return sum, err
		}
		defer mw.Close()
	}
	lopts := o.Launcher
	userOnEvent := lopts.OnEvent
	lopts.OnEvent = func(ev launcher.Event) {
		if evw != nil {
			_ = evw.Append(ev)
		}
		if mw != nil && ev.Event == "metric" && len(ev.Data) > 0 {
			_ = mw.Append(ev.Data)
		}
		if userOnEvent != nil {
			userOnEvent(ev)
		}
	}

	devices := []string{""}
	if o.PerGPU {
		if v := strings.TrimSpace(getenv("CUDA_VISIBLE_DEVICES")); v != "" && strings.Contains(v, ",") {
			devices = strings.Split(v, ",")
		}
	}
	queue := make(chan Point)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for _, dev := range devices {
		wg.Add(1)
		go func(dev string) {
			defer wg.Done()
			wo := lopts
			if dev != "" {
				wo.Env = append(append([]string(nil), wo.Env...), "CUDA_VISIBLE_DEVICES="+dev)
			}
			var w *launcher.Worker
			defer func() {
				if w != nil {
					_ = w.Close()
				}
			}()
			for p := range queue {
				if w == nil {
					nw, serr := launcher.Start(wo)
					if serr != nil {
						mu.Lock()
						if firstErr == nil {
							firstErr = serr
						}
						mu.Unlock()
						continue // drain the queue; the feeder stops at the error
					}
					w = nw
				}
				t0 := time.Now()
				res, jerr := w.Do(ctx, p.Spec)
				if ctx.Err() != nil {
					return // Do tore the runner down; the deferred Close reaps it
				}
				if launcher.KilledByStopSignal(jerr) {
					// scancel signals the job's processes (by cgroup): the runner may die of it a moment before
					// our own context is cancelled, or alone. An interruption is no row (resume runs the point);
					// killed from outside while we go on, the point runs once more on a fresh worker.
					if launcher.CancelledWithin(ctx, 0) {
						return
					}
					_ = w.Close()
					nw, serr := launcher.Start(wo)
					if serr != nil {
						w = nil
					} else {
						w = nw
						res, jerr = w.Do(ctx, p.Spec)
						if ctx.Err() != nil {
							return
						}
					}
				}
				if !w.Alive() {
					_ = w.Close()
					w = nil // a dead worker (crash, timeout, protocol error): the next point gets a fresh one
				}
				row, berr := o.BuildRow(p, res, jerr)
				if berr == nil {
					berr = rw.Append(row)
				}
				mu.Lock()
				if berr != nil && firstErr == nil {
					firstErr = berr
				}
				status := StatusOf(jerr)
				sum.Status[status]++
				msg := ""
				if jerr != nil {
					msg = ": " + jerr.Error()
				}
				fmt.Fprintf(o.Log, "mdnctl run-shard: point %s %s in %.1fs%s\n", p.ID, status, time.Since(t0).Seconds(), msg)
				mu.Unlock()
			}
		}(dev)
	}
feed:
	for _, p := range todo {
		select {
		case queue <- p:
		case <-ctx.Done():
			break feed
		}
		mu.Lock()
		stop := firstErr != nil
		mu.Unlock()
		if stop {
			break
		}
	}
	close(queue)
	wg.Wait()
	if ctx.Err() != nil {
		return sum, ctx.Err()
	}
	return sum, firstErr
}
