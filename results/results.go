// Package results stores result rows as JSON lines: appended atomically (one complete, fsynced line per row),
// read back tolerating a torn last line, merged by point (the latest row wins), and indexed for resume.
//
// The rule that makes a kill at any moment safe: a row counts only once its newline is on disk. A writer that
// dies mid-line leaves a fragment without a newline; the next Open cuts it off (saving it to <file>.torn), and
// readers ignore it, so the point is neither lost (it is not done, so it runs again) nor duplicated.
package results

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// Row is one result: a JSON object.
type Row = map[string]any

// Statuses of a sweep row.
const (
	StatusOK          = "ok"
	StatusFailed      = "failed"
	StatusIncorrect   = "incorrect"
	StatusUnavailable = "unavailable"
	StatusTimeout     = "timeout"
)

// FileName is the results file inside a sweep's folder.
const FileName = "results.jsonl"

// ErrLocked means another process holds the results file.
var ErrLocked = errors.New("results file is in use by another process")

// file is what a Writer needs of *os.File (a seam for fault-injection tests).
type file interface {
	io.Writer
	Sync() error
	Truncate(size int64) error
	Close() error
}

// Writer appends rows to one JSONL file. Safe for concurrent use.
type Writer struct {
	mu   sync.Mutex
	path string
	f    file
	lock *os.File
	size int64
	err  error // sticky: after a failed append the writer refuses more
}

// Repair says what Open had to fix.
type Repair struct {
	TornBytes int    // bytes of an incomplete last line that were cut off
	TornFile  string // where they were saved
}

// Open opens (creating folders and the file as needed) path for appending, takes an exclusive lock on it
// (<path>.lock, released by Close or process exit) and cuts off an incomplete last line.
func Open(path string) (*Writer, Repair, error) {
	var rep Repair
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, rep, fmt.Errorf("results: create %s: %w", dir, err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, rep, fmt.Errorf("results: lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, rep, fmt.Errorf("%w: %s", ErrLocked, path)
	}
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		lock.Close()
		return nil, rep, fmt.Errorf("results: open %s: %w", path, err)
	}
	size, err := repairTail(f, path, &rep)
	if err != nil {
		f.Close()
		lock.Close()
		return nil, rep, err
	}
	if created {
		syncDir(dir)
	}
	return &Writer{path: path, f: f, lock: lock, size: size}, rep, nil
}

// repairTail truncates f after its last newline, saving the cut bytes to <path>.torn. Returns the new size.
func repairTail(f *os.File, path string, rep *Repair) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("results: stat %s: %w", path, err)
	}
	size := st.Size()
	if size == 0 {
		return 0, nil
	}
	// Scan back for the last newline, 64 KiB at a time.
	end := size
	keep := int64(0)
	buf := make([]byte, 64<<10)
	for end > 0 {
		n := int64(len(buf))
		if n > end {
			n = end
		}
		if _, err := f.ReadAt(buf[:n], end-n); err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("results: read %s: %w", path, err)
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			keep = end - n + int64(i) + 1
			break
		}
		end -= n
	}
	if keep == size {
		return size, nil
	}
	torn := make([]byte, size-keep)
	if _, err := f.ReadAt(torn, keep); err != nil && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("results: read %s: %w", path, err)
	}
	rep.TornBytes, rep.TornFile = len(torn), path+".torn"
	if tf, err := os.OpenFile(rep.TornFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		_, _ = tf.Write(append(torn, '\n'))
		_ = tf.Close()
	}
	if err := f.Truncate(keep); err != nil {
		return 0, fmt.Errorf("results: cut the incomplete last line of %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("results: sync %s: %w", path, err)
	}
	return keep, nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

// Path is the file being written.
func (w *Writer) Path() string { return w.path }

// Append writes row as one line with a single write and fsyncs it. If the write fails part-way, the fragment
// is cut off again (best effort) and the writer refuses further rows.
func (w *Writer) Append(row any) error {
	b, err := json.Marshal(row)
	if err != nil {
		return fmt.Errorf("results: encode row: %w", err)
	}
	b = append(b, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	n, err := w.f.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		if n > 0 {
			_ = w.f.Truncate(w.size)
		}
		w.err = fmt.Errorf("results: append to %s: %w", w.path, err)
		return w.err
	}
	if err := w.f.Sync(); err != nil {
		w.err = fmt.Errorf("results: sync %s: %w", w.path, err)
		return w.err
	}
	w.size += int64(n)
	return nil
}

// Rotate moves the file to newPath (under the lock) and starts an empty one in its place.
func (w *Writer) Rotate(newPath string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("results: close %s: %w", w.path, err)
	}
	if err := os.Rename(w.path, newPath); err != nil {
		return fmt.Errorf("results: move %s aside: %w", w.path, err)
	}
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		w.err = fmt.Errorf("results: reopen %s: %w", w.path, err)
		return w.err
	}
	syncDir(filepath.Dir(w.path))
	w.f, w.size, w.err = f, 0, nil
	return nil
}

// Close closes the file and releases the lock.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.f.Close()
	if w.lock != nil {
		_ = syscall.Flock(int(w.lock.Fd()), syscall.LOCK_UN)
		_ = w.lock.Close()
		w.lock = nil
	}
	return err
}

// ReadInfo says what Read skipped.
type ReadInfo struct {
	Rows     int
	TornTail bool  // the file ended in an incomplete line (a writer died or is writing it)
	BadLines []int // complete lines that are not JSON objects (1-based), skipped
}

// Read returns the rows of a JSONL file in order; a missing file is no rows.
func Read(path string) ([]Row, ReadInfo, error) {
	var info ReadInfo
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, info, nil
	}
	if err != nil {
		return nil, info, fmt.Errorf("results: read %s: %w", path, err)
	}
	rows, info := parse(data)
	return rows, info, nil
}

func parse(data []byte) ([]Row, ReadInfo) {
	var info ReadInfo
	var rows []Row
	line := 0
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 { // no newline: an incomplete last line
			info.TornTail = true
			break
		}
		b := bytes.TrimSpace(data[:i])
		data = data[i+1:]
		line++
		if len(b) == 0 {
			continue
		}
		var r Row
		if err := json.Unmarshal(b, &r); err != nil || r == nil {
			info.BadLines = append(info.BadLines, line)
			continue
		}
		rows = append(rows, r)
	}
	info.Rows = len(rows)
	return rows, info
}

// ReadAll reads several files and concatenates their rows (in argument order).
func ReadAll(paths ...string) ([]Row, error) {
	var all []Row
	for _, p := range paths {
		rows, _, err := Read(p)
		if err != nil {
			return nil, err
		}
		all = append(all, rows...)
	}
	return all, nil
}

// Str returns a string field of a row ("" when absent or not a string).
func Str(r Row, key string) string {
	s, _ := r[key].(string)
	return s
}

// Merge keeps the latest row of each point (rows without a point are kept as they are), in first-seen order.
func Merge(rows []Row) []Row {
	pos := map[string]int{}
	var out []Row
	for _, r := range rows {
		p := Str(r, "point")
		if p == "" {
			out = append(out, r)
			continue
		}
		if i, ok := pos[p]; ok {
			out[i] = r
			continue
		}
		pos[p] = len(out)
		out = append(out, r)
	}
	return out
}

// Index answers "is this point done?" for resume.
type Index struct {
	latest map[string]Row
	final  map[string]bool // a row with a deterministic outcome exists
}

// Terminal reports whether a status is a deterministic outcome (rerunning would give the same).
func Terminal(status string) bool {
	return status == StatusOK || status == StatusIncorrect || status == StatusUnavailable
}

// NewIndex indexes rows by point.
func NewIndex(rows []Row) *Index {
	ix := &Index{latest: map[string]Row{}, final: map[string]bool{}}
	for _, r := range rows {
		p := Str(r, "point")
		if p == "" {
			continue
		}
		ix.latest[p] = r
		if Terminal(Str(r, "status")) {
			ix.final[p] = true
		}
	}
	return ix
}

// Done: the point has a row; with retryFailed, only a row with a deterministic outcome counts.
func (ix *Index) Done(point string, retryFailed bool) bool {
	if retryFailed {
		return ix.final[point]
	}
	_, ok := ix.latest[point]
	return ok
}

// Latest returns the point's latest row.
func (ix *Index) Latest(point string) (Row, bool) {
	r, ok := ix.latest[point]
	return r, ok
}

// Len is the number of points with rows.
func (ix *Index) Len() int { return len(ix.latest) }
