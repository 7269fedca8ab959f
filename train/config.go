package train

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Config is a run config being resolved: values by section and key, where each came from.
type Config struct {
	Name      string
	Source    string                    // the TOML file
	Values    map[string]map[string]any // section -> key -> value (complete after Finish)
	Overrides []string                  // the --set arguments applied, in order
	lines     map[string]int
	origin    map[string]string // key -> "file:line" or "--set k=v"
}

// ConfigError is a validation failure with its place: "file:line" or "--set key=value".
type ConfigError struct {
	Where string
	Msg   string
}

func (e *ConfigError) Error() string {
	if e.Where == "" {
		return e.Msg
	}
	return e.Where + ": " + e.Msg
}

// FindConfig turns a CONFIG argument into a file: a path to a TOML file, or a name in <repo>/configs:
// "<arg>.toml", else "mdn-<arg>.toml" (so "1.3b" names configs/mdn-1.3b.toml and "tiny" configs/mdn-tiny.toml).
func FindConfig(arg, configsDir string) (string, error) {
	if arg == "" {
		return "", errors.New("no config given: name one (e.g. tiny, 1.3b, gdn-1.3b) or a TOML file")
	}
	if strings.HasSuffix(arg, ".toml") || strings.ContainsRune(arg, os.PathSeparator) {
		if st, err := os.Stat(arg); err == nil && !st.IsDir() {
			return arg, nil
		}
		return "", fmt.Errorf("config file %s: not found", arg)
	}
	for _, name := range []string{arg, "mdn-" + arg} {
		p := filepath.Join(configsDir, name+".toml")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	names := ConfigNames(configsDir)
	if len(names) == 0 {
		return "", fmt.Errorf("unknown config %q and no configs found in %s", arg, configsDir)
	}
	return "", fmt.Errorf("unknown config %q: expected a TOML file or one of %s", arg, strings.Join(names, ", "))
}

// ConfigNames lists the config names in dir (MDN ones also by their bare size: "1.3b" for mdn-1.3b).
func ConfigNames(dir string) []string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.toml"))
	var out []string
	for _, f := range files {
		n := strings.TrimSuffix(filepath.Base(f), ".toml")
		if s, ok := strings.CutPrefix(n, "mdn-"); ok {
			n = s
		}
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Load parses a config file and checks every key and value (errors carry file:line). Call Set for each
// override, then Finish.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c := &Config{Source: path, Values: map[string]map[string]any{}, lines: keyLines(string(src)),
		origin: map[string]string{}}
	for _, s := range Sections {
		c.Values[s] = map[string]any{}
	}
	var raw map[string]any
	if _, err := toml.Decode(string(src), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &ConfigError{Where: fmt.Sprintf("%s:%d", path, pe.Position.Line), Msg: pe.Message}
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, top := range sortedKeys(raw) {
		v := raw[top]
		switch top {
		case "name":
			s, ok := v.(string)
			if !ok || s == "" {
				return nil, c.errAt("name", fmt.Sprintf("name = %v: expected a non-empty string", v))
			}
			c.Name = s
			continue
		case "description":
			continue
		}
		table, ok := v.(map[string]any)
		if !ok || !knownSection(top) {
			return nil, c.errAt(top, fmt.Sprintf("unknown %s %q (sections: %s)", map[bool]string{true: "section", false: "key"}[ok], top, strings.Join(Sections, ", ")))
		}
		for _, k := range sortedKeys(table) {
			key := top + "." + k
			f, err := Lookup(key)
			if err != nil {
				return nil, c.errAt(key, err.Error())
			}
			val, msg := coerce(f, table[k])
			if msg != "" {
				return nil, c.errAt(key, fmt.Sprintf("%s = %s: expected %s", key, show(table[k]), msg))
			}
			c.Values[top][k] = val
			c.origin[key] = c.where(key)
		}
	}
	if c.Name == "" {
		c.Name = strings.TrimSuffix(filepath.Base(path), ".toml")
	}
	return c, nil
}

func (c *Config) where(key string) string {
	if ln, ok := c.lines[key]; ok {
		return fmt.Sprintf("%s:%d", c.Source, ln)
	}
	return c.Source
}

func (c *Config) errAt(key, msg string) error {
	if w, ok := c.origin[key]; ok {
		return &ConfigError{Where: w, Msg: msg}
	}
	return &ConfigError{Where: c.where(key), Msg: msg}
}

// Set applies one --set override, "key=value": the key is "section.name" or a name only one section has
// (steps, lr, ...); the value is read as TOML (a bare word is a string: data.source=synthetic).
func (c *Config) Set(kv string) error {
	where := "--set " + kv
	k, v, ok := strings.Cut(kv, "=")
	k = strings.TrimSpace(k)
	if !ok || k == "" {
		return &ConfigError{Where: where, Msg: "expected key=value (e.g. steps=30 or optim.lr=1e-3)"}
	}
	f, err := Lookup(k)
	if err != nil {
		return &ConfigError{Where: where, Msg: err.Error()}
	}
	val := parseValue(strings.TrimSpace(v))
	cv, msg := coerce(f, val)
	if msg != "" {
		return &ConfigError{Where: where, Msg: fmt.Sprintf("%s = %s: expected %s", f.Key(), show(val), msg)}
	}
	if f.Section == "" {
		return &ConfigError{Where: where, Msg: "not a config key"}
	}
	c.Values[f.Section][f.Name] = cv
	c.origin[f.Key()] = where
	c.Overrides = append(c.Overrides, kv)
	return nil
}

// parseValue reads a --set value as a TOML value; anything that is not valid TOML is a plain string.
func parseValue(s string) any {
	var m map[string]any
	if _, err := toml.Decode("v = "+s, &m); err == nil {
		return m["v"]
	}
	return s
}

// Finish fills defaults and checks relations between keys.
func (c *Config) Finish() error {
	for _, f := range Schema {
		if _, ok := c.Values[f.Section][f.Name]; !ok {
			c.Values[f.Section][f.Name] = cloneDefault(f.Default)
		}
	}
	m := c.Values["model"]
	geti := func(sec, k string) int64 { x, _ := c.Values[sec][k].(int64); return x }
	layers := geti("model", "num_layers")
	seen := map[int64]bool{}
	for _, l := range m["attn_layers"].([]int64) {
		if l < 0 || l >= layers || seen[l] {
			return c.errAt("model.attn_layers", fmt.Sprintf("model.attn_layers = %s: expected distinct layer indices in [0, %d)",
				show(m["attn_layers"]), layers))
		}
		seen[l] = true
	}
	arch := m["arch"].(string)
	if arch == "transformer" || len(seen) > 0 {
		d, h := geti("model", "hidden_size"), geti("model", "attn_num_heads")
		if d%h != 0 || (d/h)%2 != 0 {
			return c.errAt("model.attn_num_heads", fmt.Sprintf("model.attn_num_heads = %d: expected a divisor of hidden_size = %d giving an even head dim", h, d))
		}
	}
	hv := float64(geti("model", "head_dim")) * m["expand_v"].(float64)
	if hv != math.Trunc(hv) {
		return c.errAt("model.expand_v", fmt.Sprintf("model.expand_v = %v: head_dim * expand_v = %v is not an integer", m["expand_v"], hv))
	}
	impls := map[string][]string{"mdn": {"auto", "chunk", "fused_recurrent", "torch", "naive"},
		"gdn": {"auto", "fla", "reference", "fla_layer"}}[arch]
	if impls == nil {
		impls = []string{"auto"}
	}
	if msg := oneOf(impls...)(m["mixer_impl"]); msg != "" {
		return c.errAt("model.mixer_impl", fmt.Sprintf("model.mixer_impl = %q: expected %s for arch %s", m["mixer_impl"], msg, arch))
	}
	d := c.Values["data"]
	switch d["source"] {
	case "shards":
		if d["path"] == "" {
			return c.errAt("data.source", `data.source = "shards" needs data.path (a .bin file, a directory or a glob)`)
		}
	case "hf":
		if d["hf_dataset"] == "" {
			return c.errAt("data.source", `data.source = "hf" needs data.hf_dataset`)
		}
	case "bytes":
		if v := geti("model", "vocab_size"); v < 256 {
			return c.errAt("model.vocab_size", fmt.Sprintf("model.vocab_size = %d: data.source \"bytes\" needs >= 256", v))
		}
	}
	p := c.Values["parallel"]
	if n := geti("parallel", "nnodes"); n > 1 && p["rdzv_endpoint"] == "" {
		return c.errAt("parallel.nnodes", fmt.Sprintf("parallel.nnodes = %d needs parallel.rdzv_endpoint (host:port of node 0)", n))
	}
	if geti("parallel", "node_rank") >= geti("parallel", "nnodes") {
		return c.errAt("parallel.node_rank", fmt.Sprintf("parallel.node_rank = %d: expected < nnodes = %d", geti("parallel", "node_rank"), geti("parallel", "nnodes")))
	}
	return nil
}

// Int, Float, Str and Bool read a resolved value ("section.name").
func (c *Config) Int(key string) int64 { v, _ := c.get(key).(int64); return v }
func (c *Config) Float(key string) float64 {
	v, _ := num(c.get(key))
	return v
}
func (c *Config) Str(key string) string { v, _ := c.get(key).(string); return v }
func (c *Config) Bool(key string) bool  { v, _ := c.get(key).(bool); return v }

func (c *Config) get(key string) any {
	sec, name, _ := strings.Cut(key, ".")
	return c.Values[sec][name]
}

func cloneDefault(v any) any {
	switch x := v.(type) {
	case []int64:
		return append([]int64{}, x...)
	case []float64:
		return append([]float64{}, x...)
	}
	return v
}

// coerce converts a decoded TOML value to the field's type; the message says what was expected.
func coerce(f *Field, v any) (any, string) {
	if s, ok := v.(string); ok && s == "none" {
		switch f.Kind {
		case KNullFloat, KNullInt, KNullString, KNullBool:
			return nil, ""
		}
	}
	var out any
	switch f.Kind {
	case KInt, KNullInt:
		switch x := v.(type) {
		case int64:
			out = x
		case float64:
			if x != math.Trunc(x) {
				return nil, f.Kind.want()
			}
			out = int64(x)
		default:
			return nil, f.Kind.want()
		}
	case KFloat, KNullFloat:
		x, ok := num(v)
		if !ok {
			return nil, f.Kind.want()
		}
		out = x
	case KString, KNullString:
		s, ok := v.(string)
		if !ok {
			return nil, f.Kind.want()
		}
		out = s
	case KBool, KNullBool:
		b, ok := v.(bool)
		if !ok {
			return nil, f.Kind.want()
		}
		out = b
	case KFloatList:
		xs, ok := v.([]any)
		if !ok {
			return nil, f.Kind.want()
		}
		fl := make([]float64, 0, len(xs))
		for _, e := range xs {
			x, ok := num(e)
			if !ok {
				return nil, f.Kind.want()
			}
			fl = append(fl, x)
		}
		out = fl
	case KIntList:
		xs, ok := v.([]any)
		if !ok {
			return nil, f.Kind.want()
		}
		il := make([]int64, 0, len(xs))
		for _, e := range xs {
			x, ok := e.(int64)
			if !ok {
				return nil, f.Kind.want()
			}
			il = append(il, x)
		}
		out = il
	case KProcs:
		switch x := v.(type) {
		case string:
			if x != "auto" {
				return nil, f.Kind.want()
			}
			out = x
		case int64:
			if x < 1 {
				return nil, f.Kind.want()
			}
			out = x
		default:
			return nil, f.Kind.want()
		}
	}
	if f.Check != nil {
		if msg := f.Check(out); msg != "" {
			return nil, msg
		}
	}
	return out, ""
}

// show renders a value as it would be written in TOML.
func show(v any) string {
	switch x := v.(type) {
	case nil:
		return `"none"`
	case string:
		return strconv.Quote(x)
	case float64:
		return formatFloat(x)
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = show(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case []int64:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = strconv.FormatInt(e, 10)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case []float64:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = formatFloat(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	return fmt.Sprint(v)
}

// formatFloat writes a float so TOML reads it back as a float (always a '.', 'e', "inf" or "nan").
func formatFloat(x float64) string {
	s := strconv.FormatFloat(x, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eEn") {
		s += ".0"
	}
	return s
}
