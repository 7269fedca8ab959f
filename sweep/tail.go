package sweep

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
)

// lineTail keeps the last lines written to it (a worker's stderr) and can say which came after a mark.
type lineTail struct {
	mu      sync.Mutex
	lines   []string
	max     int
	total   int // lines ever completed
	partial []byte
}

// stderrTailLines is how many stderr lines a failed row keeps.
const stderrTailLines = 40

func newLineTail(max int) *lineTail { return &lineTail{max: max} }

func (t *lineTail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			t.partial = append(t.partial, b...)
			if len(t.partial) > 4096 {
				t.partial = t.partial[:4096]
			}
			break
		}
		line := string(append(t.partial, b[:i]...))
		if len(line) > 2048 {
			line = line[:2048] + "…"
		}
		t.partial = t.partial[:0]
		t.lines = append(t.lines, line)
		if len(t.lines) > t.max {
			t.lines = t.lines[len(t.lines)-t.max:]
		}
		t.total++
		b = b[i+1:]
	}
	return n, nil
}

func (t *lineTail) mark() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.total
}

// since returns the lines completed after mark (at most stderrTailLines, the last ones) and any partial line.
func (t *lineTail) since(mark int) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.total - mark
	if n > len(t.lines) {
		n = len(t.lines)
	}
	out := append([]string(nil), t.lines[len(t.lines)-n:]...)
	if len(t.partial) > 0 {
		out = append(out, string(t.partial))
	}
	if len(out) > stderrTailLines {
		out = out[len(out)-stderrTailLines:]
	}
	return out
}

// openLog appends the slot's worker stderr to LogDir/<slot>.log (best effort).
func (r *slotRunner) openLog() {
	if err := os.MkdirAll(r.opts.LogDir, 0o755); err != nil {
		return
	}
	f, err := os.OpenFile(filepath.Join(r.opts.LogDir, r.slot.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err == nil {
		r.logWriter = f
	}
}
