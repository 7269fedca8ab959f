package train

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
)

// metricsFile appends metric rows, one JSON object per line, each with one write.
type metricsFile struct {
	f *os.File
}

// openMetrics opens path for appending after keeping only the complete rows with step <= keep (a resumed run
// continues after its checkpoint, so rows written after that checkpoint by the stopped run are dropped;
// keep = 0 starts a new file).
func openMetrics(path string, keep int64) (*metricsFile, error) {
	var kept [][]byte
	if keep > 0 {
		if b, err := os.ReadFile(path); err == nil {
			sc := bufio.NewScanner(bytes.NewReader(b))
			sc.Buffer(make([]byte, 1<<20), 16<<20)
			for sc.Scan() {
				line := bytes.TrimSpace(sc.Bytes())
				var row struct {
					Step *int64 `json:"step"`
				}
				if json.Unmarshal(line, &row) != nil || row.Step == nil || *row.Step > keep {
					continue // a torn last line, or a step after the checkpoint
				}
				kept = append(kept, append([]byte(nil), line...))
			}
		}
	}
	tmp := path + ".tmp"
	var buf bytes.Buffer
	for _, l := range kept {
		buf.Write(l)
		buf.WriteByte('\n')
	}
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &metricsFile{f: f}, nil
}

// Append writes one row (the metric event's data) as a line.
func (m *metricsFile) Append(data json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Compact(&buf, data); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := m.f.Write(buf.Bytes())
	return err
}

func (m *metricsFile) Close() error { return m.f.Close() }

// ReadMetrics reads the rows of a metrics.jsonl file (malformed lines are skipped).
func ReadMetrics(path string) ([]map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rows []map[string]any
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var row map[string]any
		if json.Unmarshal(line, &row) == nil {
			rows = append(rows, row)
		}
	}
	return rows, nil
}
