// Package sweep reads sweep files (TOML), expands them into grid points with gpython `where` filters and derived
// values, names each point and kernel variant by a content hash, and runs the points on warm runner workers.
package sweep

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// File is a parsed, validated sweep file.
type File struct {
	Path        string
	Name        string
	Description string
	Job         string         // runner job kind (`task`): bench (gate + timing), verify (gate only), or another job
	Generic     bool           // a task other than bench/verify: free-form axes, the [<task>] table as params
	TaskParams  map[string]any // the [<task>] table of a generic task, passed to every point
	Timeout     time.Duration  // per point
	Repeats     int
	Seed        int64
	Axes        []Axis    // in file order; the first is the outermost loop
	Derive      []Derived // in file order
	Where       *Expr     // nil: keep every point
	Bench       BenchParams
	HasSlurm    bool   // the file has a [slurm] table (validated by the slurm backend)
	Data        []byte // the file's contents

	lines keyLines
}

// Axis is one dimension of the grid. A simple axis sets one field; a group axis (a list of tables) sets several
// fields together, e.g. shape = [{H=6, K=256, V=512}, {H=16, K=128, V=128}].
type Axis struct {
	Name   string
	Values []map[string]any // field -> canonical value
	Group  bool
	Line   int
}

// Derived is a value computed per point: name = "python expression".
type Derived struct {
	Name string
	Expr *Expr
	Line int
}

// BenchParams are the fixed parameters of the bench/verify job ([bench] table).
type BenchParams struct {
	WarmupMS           int64   `json:"warmup_ms"`
	RepMS              int64   `json:"rep_ms"`
	Check              bool    `json:"check"`
	CheckT             int64   `json:"check_T"`
	CheckH             int64   `json:"check_H"`
	Tolerance          float64 `json:"tolerance"` // 0: per-dtype default of the job
	AllowNaiveFallback bool    `json:"allow_naive_fallback"`
	OfficialPath       string  `json:"official_path"`
}

// DefaultBench are the [bench] defaults.
var DefaultBench = BenchParams{WarmupMS: 25, RepMS: 100, Check: true, CheckT: 256, CheckH: 2}

// FileError is a problem in a sweep file, reported as file:line: key: message.
type FileError struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *FileError) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Key != "" {
		return fmt.Sprintf("%s: %s: %s", loc, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s", loc, e.Msg)
}

var (
	nameRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	identRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)
	taskRe  = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
)

var topKeys = map[string]string{
	"name": "string", "description": "string", "task": "string", "job": "string (same as task)", "timeout": "duration string",
	"repeats": "integer", "seed": "integer", "where": "string", "axes": "table", "derive": "table", "bench": "table",
	"slurm": "table (read by the slurm backend)",
}

var benchKeys = map[string]string{
	"warmup_ms": "integer", "rep_ms": "integer", "check": "boolean", "check_T": "integer", "check_H": "integer",
	"tolerance": "float", "allow_naive_fallback": "boolean", "official_path": "string",
}

// Load reads and validates a sweep file.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read sweep file: %w", err)
	}
	return Parse(path, data)
}

// Parse validates a sweep file's contents; path names it in errors and gives the default sweep name.
func Parse(path string, data []byte) (*File, error) {
	p := &parser{f: &File{Path: path, Job: "bench", Timeout: 10 * time.Minute, Repeats: 1, Bench: DefaultBench,
		Data: data, lines: scanKeyLines(string(data))}}
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &FileError{File: path, Line: pe.Position.Line, Msg: pe.Message}
		}
		return nil, &FileError{File: path, Msg: err.Error()}
	}
	p.parse(raw)
	if len(p.errs) > 0 {
		return nil, joinErrors(p.errs)
	}
	return p.f, nil
}

type parser struct {
	f    *File
	errs []error
}

func (p *parser) errorf(key, format string, a ...any) {
	p.errs = append(p.errs, &FileError{File: p.f.Path, Line: p.f.lines.line(key), Key: key, Msg: fmt.Sprintf(format, a...)})
}

// sortedKeys returns the keys of m in file order (then by name).
func (p *parser) sortedKeys(prefix string, m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		li, lj := p.f.lines.line(prefix+keys[i]), p.f.lines.line(prefix+keys[j])
		if li != lj {
			return li < lj
		}
		return keys[i] < keys[j]
	})
	return keys
}

func (p *parser) parse(raw map[string]any) {
	f := p.f
	// The task comes first: it decides which keys and axes are valid.
	for _, k := range []string{"task", "job"} {
		v, ok := raw[k]
		if !ok {
			continue
		}
		s, ok := p.str(k, v)
		if !ok {
			continue
		}
		if !taskRe.MatchString(s) {
			p.errorf(k, "%q is not a task name (a runner job kind such as bench, verify, mqar)", s)
			continue
		}
		if _, both := raw["task"]; both && k == "job" && s != f.Job {
			p.errorf(k, "task and job disagree (%q vs %q); use task", f.Job, s)
		}
		f.Job = s
	}
	f.Generic = f.Job != "bench" && f.Job != "verify"
	for _, k := range p.sortedKeys("", raw) {
		if _, ok := topKeys[k]; ok {
			if k == "bench" && f.Generic {
				p.errorf(k, "[bench] belongs to the bench and verify tasks; this sweep's task is %q (its table is [%s])", f.Job, f.Job)
			}
			continue
		}
		if f.Generic && k == f.Job {
			m, ok := p.table(k, raw[k])
			if ok {
				f.TaskParams = m
			}
			continue
		}
		p.errorf(k, "unknown key (known: %s)", strings.Join(sortedMapKeys(topKeys), ", "))
	}
	f.Name = strings.TrimSuffix(filepath.Base(f.Path), filepath.Ext(f.Path))
	if v, ok := raw["name"]; ok {
		if s, ok := p.str("name", v); ok {
			f.Name = s
		}
	}
	if !nameRe.MatchString(f.Name) {
		p.errorf("name", "sweep name %q must be letters, digits, '_', '.', '-' (it names the results folder)", f.Name)
	}
	if v, ok := raw["description"]; ok {
		f.Description, _ = p.str("description", v)
	}
	if v, ok := raw["timeout"]; ok {
		if s, ok := p.str("timeout", v); ok {
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				p.errorf("timeout", "%q is not a positive duration such as \"90s\" or \"10m\"", s)
			}
			f.Timeout = d
		}
	}
	if v, ok := raw["repeats"]; ok {
		if n, ok := p.integer("repeats", v); ok {
			if n < 1 || n > 1000 {
				p.errorf("repeats", "%d is outside [1, 1000]", n)
			}
			f.Repeats = int(n)
		}
	}
	if v, ok := raw["seed"]; ok {
		f.Seed, _ = p.integer("seed", v)
	}
	if v, ok := raw["bench"]; ok {
		p.parseBench(v)
	}
	if v, ok := raw["slurm"]; ok {
		_, f.HasSlurm = p.table("slurm", v)
	}
	if v, ok := raw["axes"]; ok {
		p.parseAxes(v)
	} else {
		p.errorf("axes", "missing [axes] table")
	}
	if v, ok := raw["derive"]; ok {
		p.parseDerive(v)
	}
	p.checkRequired()
	if v, ok := raw["where"]; ok {
		if s, ok := p.str("where", v); ok {
			x, err := CompileExpr(s, p.knownNames(len(f.Derive)))
			if err != nil {
				p.errorf("where", "%v", err)
			} else {
				f.Where = x
			}
		}
	}
}

func (p *parser) str(key string, v any) (string, bool) {
	s, ok := v.(string)
	if !ok {
		p.errorf(key, "must be a string, got %s", describe(v))
	}
	return s, ok
}

func (p *parser) integer(key string, v any) (int64, bool) {
	i, ok := v.(int64)
	if !ok {
		p.errorf(key, "must be an integer, got %s", describe(v))
	}
	return i, ok
}

func (p *parser) table(key string, v any) (map[string]any, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		p.errorf(key, "must be a table, got %s", describe(v))
	}
	return m, ok
}

func (p *parser) parseBench(v any) {
	m, ok := p.table("bench", v)
	if !ok {
		return
	}
	b := &p.f.Bench
	for _, k := range p.sortedKeys("bench.", m) {
		key, val := "bench."+k, m[k]
		want, known := benchKeys[k]
		if !known {
			p.errorf(key, "unknown key (known: %s)", strings.Join(sortedMapKeys(benchKeys), ", "))
			continue
		}
		switch want {
		case "integer":
			n, ok := p.integer(key, val)
			if !ok {
				continue
			}
			if n < 0 {
				p.errorf(key, "must be >= 0, got %d", n)
			}
			switch k {
			case "warmup_ms":
				b.WarmupMS = n
			case "rep_ms":
				b.RepMS = n
			case "check_T":
				b.CheckT = n
			case "check_H":
				b.CheckH = n
			}
		case "boolean":
			bv, ok := val.(bool)
			if !ok {
				p.errorf(key, "must be true or false, got %s", describe(val))
				continue
			}
			if k == "check" {
				b.Check = bv
			} else {
				b.AllowNaiveFallback = bv
			}
		case "float":
			fv, ok := val.(float64)
			if iv, isInt := val.(int64); isInt {
				fv, ok = float64(iv), true
			}
			if !ok || fv < 0 {
				p.errorf(key, "must be a number >= 0, got %s", describe(val))
				continue
			}
			b.Tolerance = fv
		case "string":
			s, _ := p.str(key, val)
			b.OfficialPath = s
		}
	}
	if b.CheckT < 1 || b.CheckH < 1 {
		p.errorf("bench", "check_T and check_H must be >= 1")
	}
}

func (p *parser) parseAxes(v any) {
	m, ok := p.table("axes", v)
	if !ok {
		return
	}
	setBy := map[string]string{} // field -> axis that sets it
	for _, name := range p.sortedKeys("axes.", m) {
		key := "axes." + name
		ax := Axis{Name: name, Line: p.f.lines.line(key)}
		vals, isList := m[name].([]any)
		if !isList {
			vals = []any{m[name]} // a scalar is a one-value axis
		}
		if len(vals) == 0 {
			p.errorf(key, "axis has no values")
			continue
		}
		_, ax.Group = vals[0].(map[string]any)
		seen := map[string]bool{}
		for i, raw := range vals {
			vkey := fmt.Sprintf("%s[%d]", key, i)
			val := map[string]any{}
			if ax.Group {
				tbl, ok := raw.(map[string]any)
				if !ok {
					p.errorf(vkey, "a group axis holds tables only, got %s", describe(raw))
					continue
				}
				if len(tbl) == 0 {
					p.errorf(vkey, "empty table")
					continue
				}
				for _, fk := range sortedMapKeys(tbl) {
					p.axisValue(vkey+"."+fk, fk, tbl[fk], val, true)
				}
			} else {
				p.axisValue(vkey, name, raw, val, false)
			}
			sig := fmt.Sprint(canonicalJSON(val))
			if seen[sig] {
				p.errorf(vkey, "duplicate value %s", sig)
			}
			seen[sig] = true
			ax.Values = append(ax.Values, val)
		}
		fields := map[string]bool{}
		for _, val := range ax.Values {
			for fk := range val {
				fields[fk] = true
			}
		}
		if ax.Group {
			for fk := range fields {
				for _, val := range ax.Values {
					if _, ok := val[fk]; !ok {
						p.errorf(key, "every table of a group axis must set the same fields (%s is missing in one)", fk)
						break
					}
				}
			}
		}
		for _, fk := range sortedMapKeys(fields) {
			if other, dup := setBy[fk]; dup {
				p.errorf(key, "field %s is already set by axis %q", fk, other)
			}
			setBy[fk] = name
		}
		p.f.Axes = append(p.f.Axes, ax)
	}
}

func (p *parser) axisValue(key, field string, raw any, into map[string]any, inGroup bool) {
	if p.f.Generic {
		if _, top := topKeys[field]; top && !inGroup {
			p.errorf(key, "%q is a top-level key: put it above the first [table] header", field)
			return
		}
		if !identRe.MatchString(field) || reservedName(field) {
			p.errorf(key, "%q cannot name an axis (an identifier other than %s)", field, strings.Join(reservedNames, ", "))
			return
		}
		switch raw.(type) {
		case int64, float64, string, bool:
			into[field] = raw
		default:
			p.errorf(key, "%s must be a number, string or boolean, got %s", field, describe(raw))
		}
		return
	}
	f, ok := LookupField(field)
	if !ok {
		if inGroup {
			p.errorf(key, "unknown field %q in a group table (fields: %s)", field, strings.Join(FieldNames(), ", "))
		} else if _, top := topKeys[field]; top {
			p.errorf(key, "%q is a top-level key: put it above the first [table] header", field)
		} else {
			p.errorf(key, "unknown axis %q (axes: %s; a list of tables makes a group axis)", field, strings.Join(FieldNames(), ", "))
		}
		return
	}
	c, err := f.Coerce(raw)
	if err != nil {
		p.errorf(key, "%v", err)
		return
	}
	into[field] = c
}

func (p *parser) parseDerive(v any) {
	m, ok := p.table("derive", v)
	if !ok {
		return
	}
	axisFields := p.axisFields()
	for _, name := range p.sortedKeys("derive.", m) {
		key := "derive." + name
		if !identRe.MatchString(name) {
			p.errorf(key, "derived name must be an identifier")
			continue
		}
		if reservedName(name) {
			p.errorf(key, "%q is reserved (%s)", name, strings.Join(reservedNames, ", "))
			continue
		}
		if axis, ok := axisFields[name]; ok {
			p.errorf(key, "%s is already an axis (%s); a derived value cannot override an axis", name, axis)
			continue
		}
		src, ok := p.str(key, m[name])
		if !ok {
			continue
		}
		x, err := CompileExpr(src, p.knownNames(len(p.f.Derive)))
		if err != nil {
			p.errorf(key, "%v", err)
			continue
		}
		p.f.Derive = append(p.f.Derive, Derived{Name: name, Expr: x, Line: p.f.lines.line(key)})
	}
}

func (p *parser) axisFields() map[string]string {
	out := map[string]string{}
	for _, ax := range p.f.Axes {
		for _, val := range ax.Values {
			for fk := range val {
				out[fk] = ax.Name
			}
		}
	}
	return out
}

// knownNames returns the names an expression may read: fields set by axes or defaults and the first n derived.
func (p *parser) knownNames(n int) func(string) bool {
	names := map[string]bool{}
	for fk := range p.axisFields() {
		names[fk] = true
	}
	if !p.f.Generic {
		for _, f := range Fields {
			if f.Default != nil {
				names[f.Name] = true
			}
		}
	}
	for _, d := range p.f.Derive[:n] {
		names[d.Name] = true
	}
	return func(s string) bool { return names[s] }
}

func (p *parser) checkRequired() {
	if p.f.Generic {
		return
	}
	have := p.axisFields()
	for _, d := range p.f.Derive {
		have[d.Name] = "derive"
	}
	for _, f := range Fields {
		if f.Default == nil {
			if _, ok := have[f.Name]; !ok {
				p.errorf("axes", "field %s (%s) is required: set it in [axes] or [derive]", f.Name, f.Doc)
			}
		}
	}
}

func (f *File) line(key string) int { return f.lines.line(key) }

// reservedNames are set by mdnctl itself in every point's parameters.
var reservedNames = []string{RepeatField, "point", "variant", "task", "job", "seed", "device", "derived", "probe"}

func reservedName(s string) bool {
	for _, r := range reservedNames {
		if s == r {
			return true
		}
	}
	return false
}

func sortedMapKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// joinErrors keeps the first ten problems, one per line.
func joinErrors(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	const max = 10
	var b strings.Builder
	for i, e := range errs {
		if i == max {
			fmt.Fprintf(&b, "\n... and %d more", len(errs)-max)
			break
		}
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(e.Error())
	}
	return &multiError{msg: b.String(), errs: errs}
}

type multiError struct {
	msg  string
	errs []error
}

func (m *multiError) Error() string   { return m.msg }
func (m *multiError) Unwrap() []error { return m.errs }
