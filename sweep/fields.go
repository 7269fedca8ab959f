package sweep

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// A Field is one named value of a grid point. Every axis, derived value and default is a field; the bench job
// receives all of them. Adding an axis is adding one entry to Fields (and reading it on the Python side).
type Field struct {
	Name    string
	Kind    Kind
	Default any  // nil: required (an axis or a derived value must set it)
	Variant bool // part of the launch spec, hence of the variant hash
	Check   func(v any) (any, error)
	Doc     string
}

// Kind is a field's value type.
type Kind int

const (
	KindInt       Kind = iota // int64
	KindString                // string
	KindIntOrAuto             // int64 or the string "auto"
)

func (k Kind) String() string {
	switch k {
	case KindInt:
		return "an integer"
	case KindString:
		return "a string"
	case KindIntOrAuto:
		return `an integer or "auto"`
	}
	return "?"
}

// Ops are the op names of the Python registry (mdn.bench.registry.OPS). Keep the two lists in step.
var Ops = []string{"mdn", "mdn_recurrent", "mdn_naive", "official", "gdn", "kda", "ssd", "sdpa"}

// Dtypes are the accepted dtype names (aliases map to them).
var Dtypes = map[string]string{
	"bfloat16": "bfloat16", "bf16": "bfloat16",
	"float16": "float16", "fp16": "float16", "half": "float16",
	"float32": "float32", "fp32": "float32", "float": "float32",
}

// Constraints are the gate distributions of mdn.bench.gates (plus stress_gap_<gap>).
var Constraints = []string{"layer_init", "trig", "clamp", "none", "spec"}

var stressRe = regexp.MustCompile(`^stress_gap_([0-9]+(\.[0-9]+)?)$`)

// Fields in display order. Variant fields first, then the shape, then the rest.
var Fields = []Field{
	{Name: "op", Kind: KindString, Variant: true, Check: oneOf(Ops), Doc: "op registry name"},
	{Name: "chunk_size", Kind: KindInt, Default: int64(64), Variant: true, Check: intIn(16, 32, 64, 128), Doc: "chunk length"},
	{Name: "BK", Kind: KindIntOrAuto, Default: "auto", Variant: true, Check: pow2OrAuto(16, 256), Doc: "K tile"},
	{Name: "BV", Kind: KindIntOrAuto, Default: "auto", Variant: true, Check: pow2OrAuto(16, 512), Doc: "V tile"},
	{Name: "num_warps", Kind: KindIntOrAuto, Default: "auto", Variant: true, Check: pow2OrAuto(1, 16), Doc: "Triton num_warps"},
	{Name: "num_stages", Kind: KindIntOrAuto, Default: "auto", Variant: true, Check: rangeOrAuto(1, 8), Doc: "Triton num_stages"},
	{Name: "constraint", Kind: KindString, Default: "layer_init", Variant: true, Check: checkConstraint, Doc: "gate distribution"},
	{Name: "dtype", Kind: KindString, Default: "bfloat16", Variant: true, Check: checkDtype, Doc: "q/k/v dtype"},
	{Name: "mode", Kind: KindString, Default: "fwd", Check: oneOf([]string{"fwd", "fwdbwd"}), Doc: "fwd or fwdbwd"},
	{Name: "B", Kind: KindInt, Check: intRange(1, 1<<20), Doc: "batch"},
	{Name: "T", Kind: KindInt, Check: intRange(1, 1<<24), Doc: "sequence length"},
	{Name: "H", Kind: KindInt, Check: intRange(1, 1024), Doc: "heads"},
	{Name: "K", Kind: KindInt, Check: intRange(1, 4096), Doc: "key head dim"},
	{Name: "V", Kind: KindInt, Check: intRange(1, 4096), Doc: "value head dim"},
}

// RepeatField is set from the top-level `repeats` (0 .. repeats-1); it is part of the point id.
const RepeatField = "repeat"

var fieldByName = func() map[string]*Field {
	m := map[string]*Field{}
	for i := range Fields {
		m[Fields[i].Name] = &Fields[i]
	}
	return m
}()

// LookupField returns the field called name.
func LookupField(name string) (*Field, bool) {
	f, ok := fieldByName[name]
	return f, ok
}

// FieldNames lists the field names in display order.
func FieldNames() []string {
	out := make([]string, len(Fields))
	for i, f := range Fields {
		out[i] = f.Name
	}
	return out
}

// Coerce checks v against the field's kind and check, returning the canonical value.
func (f *Field) Coerce(v any) (any, error) {
	switch f.Kind {
	case KindInt:
		i, ok := asInt(v)
		if !ok {
			return nil, fmt.Errorf("%s must be %s, got %s", f.Name, f.Kind, describe(v))
		}
		v = i
	case KindString:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%s must be %s, got %s", f.Name, f.Kind, describe(v))
		}
		v = s
	case KindIntOrAuto:
		if s, ok := v.(string); ok {
			if s != "auto" {
				return nil, fmt.Errorf("%s must be %s, got %q", f.Name, f.Kind, s)
			}
		} else if i, ok := asInt(v); ok {
			v = i
		} else {
			return nil, fmt.Errorf("%s must be %s, got %s", f.Name, f.Kind, describe(v))
		}
	}
	if f.Check != nil {
		c, err := f.Check(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name, err)
		}
		v = c
	}
	return v, nil
}

func asInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case int:
		return int64(x), true
	case float64: // an integral float from an expression (e.g. 2.0 ** 10) is accepted
		if x == float64(int64(x)) {
			return int64(x), true
		}
	}
	return 0, false
}

func describe(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", x)
	case nil:
		return "None"
	case bool:
		return fmt.Sprintf("the boolean %v", x)
	case float64:
		return fmt.Sprintf("the float %v", x)
	case int64:
		return fmt.Sprintf("the integer %d", x)
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("%v (%T)", v, v)
}

func oneOf(allowed []string) func(any) (any, error) {
	return func(v any) (any, error) {
		s := v.(string)
		for _, a := range allowed {
			if s == a {
				return s, nil
			}
		}
		return nil, fmt.Errorf("%q is not one of %s", s, strings.Join(allowed, ", "))
	}
}

func intIn(allowed ...int64) func(any) (any, error) {
	return func(v any) (any, error) {
		i := v.(int64)
		for _, a := range allowed {
			if i == a {
				return i, nil
			}
		}
		s := make([]string, len(allowed))
		for j, a := range allowed {
			s[j] = strconv.FormatInt(a, 10)
		}
		return nil, fmt.Errorf("%d is not one of %s", i, strings.Join(s, ", "))
	}
}

func intRange(lo, hi int64) func(any) (any, error) {
	return func(v any) (any, error) {
		i := v.(int64)
		if i < lo || i > hi {
			return nil, fmt.Errorf("%d is outside [%d, %d]", i, lo, hi)
		}
		return i, nil
	}
}

func pow2OrAuto(lo, hi int64) func(any) (any, error) {
	return func(v any) (any, error) {
		i, ok := v.(int64)
		if !ok {
			return v, nil // "auto"
		}
		if i < lo || i > hi || i&(i-1) != 0 {
			return nil, fmt.Errorf("%d is not a power of two in [%d, %d]", i, lo, hi)
		}
		return i, nil
	}
}

func rangeOrAuto(lo, hi int64) func(any) (any, error) {
	r := intRange(lo, hi)
	return func(v any) (any, error) {
		if _, ok := v.(int64); !ok {
			return v, nil
		}
		return r(v)
	}
}

func checkDtype(v any) (any, error) {
	s := v.(string)
	if c, ok := Dtypes[strings.ToLower(s)]; ok {
		return c, nil
	}
	return nil, fmt.Errorf("%q is not a dtype (bfloat16, float16, float32)", s)
}

func checkConstraint(v any) (any, error) {
	s := v.(string)
	for _, c := range Constraints {
		if s == c {
			return s, nil
		}
	}
	if stressRe.MatchString(s) {
		return s, nil
	}
	return nil, fmt.Errorf("%q is not a gate distribution (%s, or stress_gap_<gap> such as stress_gap_0.3)",
		s, strings.Join(Constraints, ", "))
}
