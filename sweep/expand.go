package sweep

import (
	"fmt"
	"strings"
)

// Point is one resolved grid point.
type Point struct {
	Index   int            // position in the plan (0-based)
	ID      string         // stable id of the point (hash)
	Variant string         // hash of the launch spec
	Values  map[string]any // every field, the derived extras, and "repeat"
	Extras  []string       // derived names that are not fields, in file order
	Generic bool           // a point of a task other than bench/verify
	// CheckMode is the mode of the correctness gate when it differs from the point's: "fwdbwd" for a `fwd` point
	// whose family (familyKey) also times the backward, so one forward+backward gate serves both (the forward
	// point's verdict is then taken from the output and state errors only). Empty: the gate runs in Values["mode"].
	CheckMode string
}

// Plan is the expanded grid.
type Plan struct {
	File       *File
	Points     []Point
	Filtered   int // points dropped by `where`
	Duplicates int // points equal to an earlier one (same id), dropped
}

// Expand resolves every combination of axis values: defaults, then axes, then derived values in file order,
// then the `where` filter, then repeats. Any error names the file:line of the expression and the point.
func (f *File) Expand() (*Plan, error) {
	ev := NewEvaluator()
	plan := &Plan{File: f}
	seen := map[string]bool{}
	var extras []string
	for _, d := range f.Derive {
		if _, isField := LookupField(d.Name); !isField && !f.Generic {
			extras = append(extras, d.Name)
		}
	}
	idx := make([]int, len(f.Axes))
	total := 1
	for _, ax := range f.Axes {
		total *= len(ax.Values)
		if total > 1_000_000 {
			return nil, &FileError{File: f.Path, Line: ax.Line, Key: "axes." + ax.Name, Msg: "the grid has more than a million points"}
		}
	}
	for n := 0; n < total; n++ {
		// idx is the mixed-radix counter over the axes; the last axis varies fastest.
		rem := n
		for i := len(f.Axes) - 1; i >= 0; i-- {
			idx[i] = rem % len(f.Axes[i].Values)
			rem /= len(f.Axes[i].Values)
		}
		vals := map[string]any{}
		if !f.Generic {
			for _, fd := range Fields {
				if fd.Default != nil {
					vals[fd.Name] = fd.Default
				}
			}
		}
		for i, ax := range f.Axes {
			for k, v := range ax.Values[idx[i]] {
				vals[k] = v
			}
		}
		for _, d := range f.Derive {
			v, err := ev.Eval(d.Expr, vals)
			if err != nil {
				return nil, f.pointErr("derive."+d.Name, vals, err)
			}
			if fd, ok := LookupField(d.Name); ok && !f.Generic {
				c, err := fd.Coerce(v)
				if err != nil {
					return nil, f.pointErr("derive."+d.Name, vals, err)
				}
				v = c
			} else if v == nil {
				return nil, f.pointErr("derive."+d.Name, vals, fmt.Errorf("value is None"))
			}
			vals[d.Name] = v
		}
		if f.Where != nil {
			v, err := ev.Eval(f.Where, vals)
			if err != nil {
				return nil, f.pointErr("where", vals, err)
			}
			keep, ok := v.(bool)
			if !ok {
				return nil, f.pointErr("where", vals, fmt.Errorf("must give True or False, gave %s", describe(v)))
			}
			if !keep {
				plan.Filtered++
				continue
			}
		}
		for r := 0; r < f.Repeats; r++ {
			pv := make(map[string]any, len(vals)+1)
			for k, v := range vals {
				pv[k] = v
			}
			pv[RepeatField] = int64(r)
			id := f.PointID(pv)
			if seen[id] {
				plan.Duplicates++
				continue
			}
			seen[id] = true
			plan.Points = append(plan.Points, Point{Index: len(plan.Points), ID: id, Variant: f.VariantHash(pv),
				Values: pv, Extras: extras, Generic: f.Generic})
		}
	}
	if !f.Generic {
		shareGates(plan.Points)
	}
	return plan, nil
}

// shareGates sets CheckMode = "fwdbwd" on the `fwd` points whose family has a `fwdbwd` point: the worker that
// runs the family (the queue keeps a family on one slot) then computes one gate instead of two.
func shareGates(points []Point) {
	withBwd := map[string]bool{}
	for _, p := range points {
		if p.Values["mode"] == "fwdbwd" {
			withBwd[familyKey(p)] = true
		}
	}
	for i, p := range points {
		if p.Values["mode"] == "fwd" && withBwd[familyKey(p)] {
			points[i].CheckMode = "fwdbwd"
		}
	}
}

func (f *File) pointErr(key string, vals map[string]any, err error) error {
	return &FileError{File: f.Path, Line: f.line(key), Key: key,
		Msg: fmt.Sprintf("%v, at point %s", err, describePoint(vals))}
}

// describePoint renders the fields of a point compactly: op=mdn chunk_size=64 ... (display order).
func describePoint(vals map[string]any) string {
	var parts []string
	for _, f := range Fields {
		if v, ok := vals[f.Name]; ok {
			parts = append(parts, fmt.Sprintf("%s=%v", f.Name, v))
		}
	}
	if len(parts) == 0 { // a generic task: every value, by name
		for _, k := range sortedKeysAny(vals) {
			parts = append(parts, fmt.Sprintf("%s=%v", k, vals[k]))
		}
	}
	return strings.Join(parts, " ")
}

// Columns are the plan's table columns: the fields that vary or were set explicitly, in display order, then
// the derived extras, then repeat when repeats > 1.
func (p *Plan) Columns() []string {
	if p.File.Generic {
		var cols []string
		for _, ax := range p.File.Axes {
			for _, k := range sortedKeysAny(ax.Values[0]) {
				cols = append(cols, k)
			}
		}
		for _, d := range p.File.Derive {
			cols = append(cols, d.Name)
		}
		if p.File.Repeats > 1 {
			cols = append(cols, RepeatField)
		}
		return cols
	}
	var cols []string
	set := map[string]bool{}
	for _, ax := range p.File.Axes {
		for _, v := range ax.Values {
			for k := range v {
				set[k] = true
			}
		}
	}
	for _, d := range p.File.Derive {
		set[d.Name] = true
	}
	for _, f := range Fields {
		if set[f.Name] || f.Default == nil {
			cols = append(cols, f.Name)
		}
	}
	for _, d := range p.File.Derive {
		if _, isField := LookupField(d.Name); !isField {
			cols = append(cols, d.Name)
		}
	}
	if p.File.Repeats > 1 {
		cols = append(cols, RepeatField)
	}
	return cols
}
