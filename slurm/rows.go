package slurm

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// RowWriter appends complete JSON lines to one file: one write(2) per row on an O_APPEND descriptor, then fsync,
// so a reader (or a kill at any moment) sees whole rows or a torn last line that readers skip.
type RowWriter struct {
	mu sync.Mutex
	f  *os.File
}

// OpenRows opens (creating) a rows file for appending.
func OpenRows(path string) (*RowWriter, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("results dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open results file: %w", err)
	}
	return &RowWriter{f: f}, nil
}

// Append writes one row (any JSON-marshalable value, normally an object).
func (w *RowWriter) Append(row any) error {
	b, err := json.Marshal(row)
	if err != nil {
		return fmt.Errorf("encode row: %w", err)
	}
	if bytes.IndexByte(b, '\n') >= 0 {
		return fmt.Errorf("encode row: newline in encoded JSON")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("append row to %s: %w", w.f.Name(), err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", w.f.Name(), err)
	}
	return nil
}

// Close closes the file.
func (w *RowWriter) Close() error { return w.f.Close() }

// RowFiles lists the results files of a directory that readers merge: results.jsonl (local runs) and
// results.<jobid>_<task>.jsonl (one per array task), sorted by name.
func RowFiles(dir string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(dir, "results*.jsonl"))
	if err != nil {
		return nil, err
	}
	sort.Strings(m)
	return m, nil
}

// ReadRows merges every results file of dir; a torn last line (a writer killed mid-row) is skipped, any other
// line that is not a JSON object is an error naming file:line.
func ReadRows(dir string) ([]map[string]json.RawMessage, error) {
	files, err := RowFiles(dir)
	if err != nil {
		return nil, err
	}
	var rows []map[string]json.RawMessage
	for _, f := range files {
		r, err := readRowFile(f)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r...)
	}
	return rows, nil
}

func readRowFile(path string) ([]map[string]json.RawMessage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<16)
	var rows []map[string]json.RawMessage
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			// no trailing newline: a row whose write never completed; not a row.
			return rows, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var row map[string]json.RawMessage
		if err := json.Unmarshal(line, &row); err != nil {
			return nil, fmt.Errorf("%s:%d: not a result row: %v", path, n, err)
		}
		rows = append(rows, row)
	}
}

// RowString returns a string field of a row ("" when absent or not a string).
func RowString(row map[string]json.RawMessage, key string) string {
	var s string
	if v, ok := row[key]; ok {
		_ = json.Unmarshal(v, &s)
	}
	return s
}

// DonePoints returns the points of dir that have a row (whatever its status: a failed point was run and
// reported; resume does not repeat it), with the status of the last row seen for each.
func DonePoints(dir string) (map[string]string, error) {
	rows, err := ReadRows(dir)
	if err != nil {
		return nil, err
	}
	done := map[string]string{}
	for _, r := range rows {
		if p := RowString(r, "point"); p != "" {
			done[p] = RowString(r, "status")
		}
	}
	return done, nil
}
