package sweep

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/mdnctl/mdnctl/results"
)

// NewProgress returns the progress display: a bar with done/failed/remaining and ETA on a terminal, one plain
// line per point otherwise; nil when quiet.
func NewProgress(w io.Writer, tty, quiet bool) Progress {
	if quiet {
		return nil
	}
	if tty {
		return &barProgress{w: w}
	}
	return &lineProgress{w: w}
}

// PointLabel is a short description of a point: the fields that matter for reading a line.
func PointLabel(p Point) string {
	v := p.Values
	if p.Generic {
		return describePoint(v)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-13v", v["op"])
	fmt.Fprintf(&b, " cs=%-3v %-8v %-6v", v["chunk_size"], v["dtype"], v["mode"])
	fmt.Fprintf(&b, " B=%v T=%v H=%v K=%v V=%v", v["B"], v["T"], v["H"], v["K"], v["V"])
	if c := v["constraint"]; c != "layer_init" {
		fmt.Fprintf(&b, " %v", c)
	}
	for _, k := range []string{"BK", "BV", "num_warps", "num_stages"} {
		if v[k] != "auto" {
			fmt.Fprintf(&b, " %s=%v", k, v[k])
		}
	}
	if r, _ := v[RepeatField].(int64); r > 0 {
		fmt.Fprintf(&b, " #%d", r)
	}
	return b.String()
}

// RowOutcome is a short description of a row's result: the time and throughput, or the reason.
func RowOutcome(row results.Row) string {
	st := results.Str(row, "status")
	if acc, ok := row["accuracy"].(float64); ok && st == results.StatusOK {
		return fmt.Sprintf("accuracy %.4f", acc)
	}
	if st == results.StatusOK {
		ms, _ := row["median_ms"].(float64)
		s := fmt.Sprintf("%.3f ms", ms)
		if tps, ok := row["tokens_per_s"].(float64); ok {
			s += fmt.Sprintf("  %s tok/s", siNumber(tps))
		}
		return s
	}
	reason := results.Str(row, "reason")
	if len(reason) > 160 {
		reason = reason[:160] + "…"
	}
	return reason
}

func siNumber(x float64) string {
	switch {
	case x >= 1e9:
		return fmt.Sprintf("%.2fG", x/1e9)
	case x >= 1e6:
		return fmt.Sprintf("%.2fM", x/1e6)
	case x >= 1e3:
		return fmt.Sprintf("%.1fk", x/1e3)
	}
	return fmt.Sprintf("%.0f", x)
}

func workerLine(slot Slot, info WorkerInfo) string {
	return fmt.Sprintf("%s: worker ready on %s (spawn %.2fs, imports %.2fs)", slot.Name, info.DeviceName, info.SpawnS, info.ImportS)
}

// lineProgress prints one line per event (logs, CI).
type lineProgress struct {
	mu    sync.Mutex
	w     io.Writer
	total int
	done  int
}

func (l *lineProgress) Begin(total, skipped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total, l.done = total, skipped
	if skipped > 0 {
		fmt.Fprintf(l.w, "%d of %d points already done (resume)\n", skipped, total)
	}
}

func (l *lineProgress) WorkerReady(slot Slot, info WorkerInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintln(l.w, workerLine(slot, info))
}

func (l *lineProgress) WorkerFailed(slot Slot, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "worker failed to start: %v\n", err)
}

func (l *lineProgress) PointDone(slot Slot, p Point, row results.Row) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.done++
	w := len(fmt.Sprint(l.total))
	fmt.Fprintf(l.w, "[%*d/%d] %-11s %s  %s  (%s)\n", w, l.done, l.total, results.Str(row, "status"), PointLabel(p),
		RowOutcome(row), slot.Name)
}

func (l *lineProgress) End(*Summary) {}

// barProgress is an mpb bar; finished points that did not end ok are printed above it.
type barProgress struct {
	w      io.Writer
	p      *mpb.Progress
	bar    *mpb.Bar
	failed atomic.Int64
	start  time.Time
}

func (b *barProgress) Begin(total, skipped int) {
	b.p = mpb.New(mpb.WithOutput(b.w), mpb.WithWidth(32), mpb.WithRefreshRate(200*time.Millisecond))
	b.start = time.Now()
	todo := int64(total - skipped)
	name := "sweep"
	if skipped > 0 {
		name = fmt.Sprintf("sweep (%d already done)", skipped)
	}
	b.bar = b.p.AddBar(todo,
		mpb.PrependDecorators(decor.Name(name+" ")),
		mpb.AppendDecorators(
			decor.Any(func(s decor.Statistics) string {
				return fmt.Sprintf(" %d done  %d failed  %d left", s.Current, b.failed.Load(), s.Total-s.Current)
			}),
			decor.OnComplete(decor.AverageETA(decor.ET_STYLE_GO, decor.WC{C: decor.DSyncSpace}), "  finished"),
		),
	)
	if todo == 0 {
		b.bar.SetTotal(0, true)
	}
}

func (b *barProgress) WorkerReady(slot Slot, info WorkerInfo) {
	fmt.Fprintln(b.p, workerLine(slot, info))
}

func (b *barProgress) WorkerFailed(slot Slot, err error) {
	fmt.Fprintf(b.p, "worker failed to start: %v\n", err)
}

func (b *barProgress) PointDone(slot Slot, p Point, row results.Row) {
	if st := results.Str(row, "status"); st != results.StatusOK {
		b.failed.Add(1)
		fmt.Fprintf(b.p, "%-11s %s  %s  (%s)\n", st, PointLabel(p), RowOutcome(row), slot.Name)
	}
	b.bar.Increment()
}

func (b *barProgress) End(*Summary) {
	if b.bar != nil && !b.bar.Completed() {
		b.bar.Abort(false)
	}
	b.p.Wait()
}
