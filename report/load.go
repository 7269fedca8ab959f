package report

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Dataset is every row read from a set of inputs, with where each came from.
type Dataset struct {
	Rows     []Row
	Files    []SourceFile
	Warnings []string // non-fatal problems (e.g. an incomplete last line of a file still being written)
}

// SourceFile is one file read and how many rows it gave.
type SourceFile struct {
	Path string `json:"path"`
	Rows int    `json:"rows"`
}

// Extensions read when a directory is walked. Files named explicitly may also be .json or .ndjson.
var dirExtensions = []string{".jsonl", ".csv"}

// Load reads files, directories (walked recursively for *.jsonl and *.csv, hidden directories skipped) and
// globs. A malformed line in the middle of a JSONL file is an error naming file:line; a malformed last line is
// skipped with a warning, since a results file may be in the middle of being appended to.
func Load(paths []string) (*Dataset, error) {
	if len(paths) == 0 {
		return nil, errors.New("no input: give result files, run directories or globs")
	}
	var files []string
	seen := map[string]bool{}
	add := func(p string) {
		c := filepath.Clean(p)
		if !seen[c] {
			seen[c] = true
			files = append(files, c)
		}
	}
	for _, p := range paths {
		if strings.ContainsAny(p, "*?[") {
			matches, err := filepath.Glob(p)
			if err != nil {
				return nil, fmt.Errorf("bad glob %q: %w", p, err)
			}
			if len(matches) == 0 {
				return nil, fmt.Errorf("no file matches %q", p)
			}
			sort.Strings(matches)
			for _, m := range matches {
				found, err := expand(m)
				if err != nil {
					return nil, err
				}
				for _, f := range found {
					add(f)
				}
			}
			continue
		}
		found, err := expand(p)
		if err != nil {
			return nil, err
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("%s: no result files (%s) in this directory", p, strings.Join(dirExtensions, ", "))
		}
		for _, f := range found {
			add(f)
		}
	}
	ds := &Dataset{}
	for _, f := range files {
		n := len(ds.Rows)
		if err := ds.readFile(f); err != nil {
			return nil, err
		}
		ds.Files = append(ds.Files, SourceFile{Path: f, Rows: len(ds.Rows) - n})
	}
	return ds, nil
}

// expand turns a path into the files it names: itself, or the result files under a directory.
func expand(p string) ([]string, error) {
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: no such file or directory", p)
		}
		return nil, err
	}
	if !st.IsDir() {
		return []string{p}, nil
	}
	var out []string
	err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != p && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		ext := strings.ToLower(filepath.Ext(path))
		for _, e := range dirExtensions {
			if ext == e {
				out = append(out, path)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading directory %s: %w", p, err)
	}
	sort.Strings(out)
	return out, nil
}

func (ds *Dataset) readFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	run := filepath.Base(filepath.Dir(path))
	switch strings.ToLower(filepath.Ext(path)) {
	case ".jsonl", ".ndjson":
		return ds.readJSONL(path, run, data)
	case ".json":
		return ds.readJSON(path, run, data)
	case ".csv":
		return ds.readCSV(path, run, data)
	}
	return fmt.Errorf("%s: unsupported file type %q (expected .jsonl, .json or .csv)", path, filepath.Ext(path))
}

func (ds *Dataset) readJSONL(path, run string, data []byte) error {
	lines := bytes.Split(data, []byte("\n"))
	last := len(lines) - 1
	for last >= 0 && len(bytes.TrimSpace(lines[last])) == 0 {
		last--
	}
	for i := 0; i <= last; i++ {
		line := bytes.TrimSpace(lines[i])
		if len(line) == 0 {
			continue
		}
		var obj map[string]any
		err := json.Unmarshal(line, &obj)
		if err != nil {
			if i == last {
				ds.Warnings = append(ds.Warnings, fmt.Sprintf("%s:%d: skipped an incomplete last line (is the file still being written?): %s", path, i+1, shortErr(err)))
				continue
			}
			return fmt.Errorf("%s:%d: not a JSON object (%s); the line starts with %q", path, i+1, shortErr(err), head(line, 60))
		}
		if obj == nil {
			return fmt.Errorf("%s:%d: expected a JSON object, got null", path, i+1)
		}
		if row, keep := fromEvent(obj); keep {
			ds.add(row, path, run, i+1)
		}
	}
	return nil
}

func (ds *Dataset) readJSON(path, run string, data []byte) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line := 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
			return fmt.Errorf("%s:%d: invalid JSON: %s", path, line, shortErr(err))
		}
		return fmt.Errorf("%s: invalid JSON: %s", path, shortErr(err))
	}
	var items []any
	switch x := v.(type) {
	case []any:
		items = x
	case map[string]any:
		// {"points": [...]} and the like: the one field that holds an array of objects; else the object itself.
		var arrays []string
		for k, f := range x {
			if arr, ok := f.([]any); ok && len(arr) > 0 {
				if _, ok := arr[0].(map[string]any); ok {
					arrays = append(arrays, k)
				}
			}
		}
		switch len(arrays) {
		case 0:
			items = []any{x}
		case 1:
			items = x[arrays[0]].([]any)
			// scalar fields beside the array (e.g. rho mode, device) apply to every row
			for i, it := range items {
				if m, ok := it.(map[string]any); ok {
					merged := map[string]any{}
					for k, f := range x {
						if k != arrays[0] {
							merged[k] = f
						}
					}
					for k, f := range m {
						merged[k] = f
					}
					items[i] = merged
				}
			}
		default:
			sort.Strings(arrays)
			return fmt.Errorf("%s: ambiguous JSON: several arrays of objects (%s); expected one array of rows", path, strings.Join(arrays, ", "))
		}
	default:
		return fmt.Errorf("%s: expected a JSON array of objects or an object, got %T", path, v)
	}
	for i, it := range items {
		m, ok := it.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: element %d: expected a JSON object, got %T", path, i, it)
		}
		if row, keep := fromEvent(m); keep {
			ds.add(row, path, run, i+1)
		}
	}
	return nil
}

func (ds *Dataset) readCSV(path, run string, data []byte) error {
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if err != nil {
		if err == io.EOF {
			return nil
		}
		return fmt.Errorf("%s:1: bad CSV header: %s", path, shortErr(err))
	}
	for i := range header {
		header[i] = strings.TrimSpace(header[i])
	}
	type rec struct {
		line   int
		fields []string
		err    error
	}
	var recs []rec
	for {
		fields, err := r.Read()
		if err == io.EOF {
			break
		}
		line, _ := r.FieldPos(0)
		recs = append(recs, rec{line, fields, err})
		if err != nil {
			break
		}
	}
	for i, rc := range recs {
		lastRec := i == len(recs)-1
		bad := rc.err
		if bad == nil && len(rc.fields) != len(header) {
			bad = fmt.Errorf("%d fields, the header has %d", len(rc.fields), len(header))
		}
		if bad != nil {
			if lastRec && !bytes.HasSuffix(data, []byte("\n")) {
				ds.Warnings = append(ds.Warnings, fmt.Sprintf("%s:%d: skipped an incomplete last line (is the file still being written?): %s", path, rc.line, shortErr(bad)))
				continue
			}
			return fmt.Errorf("%s:%d: bad CSV record: %s", path, rc.line, shortErr(bad))
		}
		row := Row{}
		for j, h := range header {
			if v, ok := parseCSVValue(rc.fields[j]); ok {
				row[h] = v
			}
		}
		ds.add(row, path, run, rc.line)
	}
	return nil
}

func parseCSVValue(s string) (any, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, false
	}
	switch strings.ToLower(s) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return f, true
	}
	return s, true
}

// fromEvent flattens a row. Runner protocol events ({"event": "metric", "data": {...}}) become their data
// (plus job and t); events that carry no data (start, progress, end) are dropped.
func fromEvent(obj map[string]any) (Row, bool) {
	row := Row{}
	if ev, ok := obj["event"].(string); ok {
		data, hasData := obj["data"].(map[string]any)
		if !hasData {
			return nil, false
		}
		for _, k := range []string{"job", "t", "event"} {
			if v, ok := obj[k]; ok {
				row[k] = v
			}
		}
		row["event"] = ev
		flatten(row, "", data)
		return row, true
	}
	flatten(row, "", obj)
	return row, true
}

func flatten(dst Row, prefix string, m map[string]any) {
	for k, v := range m {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		if sub, ok := v.(map[string]any); ok {
			flatten(dst, key, sub)
			continue
		}
		if arr, ok := v.([]any); ok {
			// arrays are kept as compact JSON text; reports never pivot on them
			b, _ := json.Marshal(arr)
			dst[key] = string(b)
			continue
		}
		dst[key] = v
	}
}

func (ds *Dataset) add(row Row, path, run string, line int) {
	row[FieldFile] = path
	row[FieldLine] = float64(line)
	row[FieldRun] = run
	ds.Rows = append(ds.Rows, row)
}

func shortErr(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "json: ")
	return s
}

func head(b []byte, n int) string {
	s := string(b)
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
