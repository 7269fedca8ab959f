// Package report turns result rows (sweeps, training runs, evaluations, stability grids) into comparison
// tables, plots and a self-contained HTML page.
//
// It reads results only and agrees with their writers on nothing but field names: every row is a generic
// map[string]any, nested objects are flattened to dotted keys ("versions.torch"), and a field is found by its
// exact name or, failing that, by a unique dotted suffix ("torch" finds "versions.torch"). Rows from different
// devices or software versions are never mixed silently: tables and plots are split by them and say so.
package report

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Row is one result: a flat map of field name to value (string, float64, bool or nil).
// The loader adds the bookkeeping fields FieldFile, FieldLine and FieldRun.
type Row map[string]any

// Bookkeeping fields the loader adds to every row.
const (
	FieldFile = "_file" // the file the row came from
	FieldLine = "_line" // its 1-based line (JSONL/CSV) or index (JSON)
	FieldRun  = "_run"  // the name of the directory holding the file (a run or sweep name)
)

// Lookup finds a field by exact name or, failing that, by a unique dotted suffix: "torch" matches
// "versions.torch". It returns the actual key too.
func (r Row) Lookup(key string) (any, string, bool) {
	if v, ok := r[key]; ok {
		return v, key, true
	}
	suffix := "." + key
	found := ""
	for k := range r {
		if strings.HasSuffix(k, suffix) {
			if found != "" { // ambiguous: refuse to guess
				return nil, "", false
			}
			found = k
		}
	}
	if found == "" {
		return nil, "", false
	}
	return r[found], found, true
}

// Get is Lookup without the actual key.
func (r Row) Get(key string) (any, bool) {
	v, _, ok := r.Lookup(key)
	return v, ok
}

// Str returns a field formatted for display ("" and false when absent).
func (r Row) Str(key string) (string, bool) {
	v, ok := r.Get(key)
	if !ok || v == nil {
		return "", false
	}
	return FormatValue(v), true
}

// Num returns a field as a float64 when it is a finite-or-not number (or a numeric string).
func (r Row) Num(key string) (float64, bool) {
	v, ok := r.Get(key)
	if !ok {
		return 0, false
	}
	return toFloat(v)
}

// Status is the row's status field, "ok" when absent (training metrics, stability grids).
func (r Row) Status() string {
	if s, ok := r.Str("status"); ok && s != "" {
		return s
	}
	return "ok"
}

// Where says where the row came from, as file:line.
func (r Row) Where() string {
	f, _ := r[FieldFile].(string)
	l, _ := toFloat(r[FieldLine])
	return fmt.Sprintf("%s:%d", f, int(l))
}

func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case float32:
		return float64(x), true
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
		return f, err == nil
	}
	return 0, false
}

// FormatValue renders an axis value: integral floats without a decimal point, others compactly.
func FormatValue(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case bool:
		return strconv.FormatBool(x)
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1e15 {
			return strconv.FormatInt(int64(x), 10)
		}
		return strconv.FormatFloat(x, 'g', -1, 64)
	case int:
		return strconv.Itoa(x)
	case int64:
		return strconv.FormatInt(x, 10)
	}
	return fmt.Sprint(v)
}

// FormatNumber renders a measurement with four significant digits, with k/M/G suffixes for large values.
func FormatNumber(x float64) string {
	if math.IsNaN(x) {
		return "NaN"
	}
	if math.IsInf(x, 0) {
		if x > 0 {
			return "+Inf"
		}
		return "-Inf"
	}
	a := math.Abs(x)
	switch {
	case a >= 1e9:
		return trimZeros(strconv.FormatFloat(x/1e9, 'f', sigDecimals(x/1e9), 64)) + "G"
	case a >= 1e6:
		return trimZeros(strconv.FormatFloat(x/1e6, 'f', sigDecimals(x/1e6), 64)) + "M"
	case a >= 1e5:
		return trimZeros(strconv.FormatFloat(x/1e3, 'f', sigDecimals(x/1e3), 64)) + "k"
	case a == 0:
		return "0"
	case a < 1e-3:
		return strconv.FormatFloat(x, 'e', 2, 64)
	}
	return trimZeros(strconv.FormatFloat(x, 'f', sigDecimals(x), 64))
}

// sigDecimals is the number of decimals that leaves four significant digits (at least 0).
func sigDecimals(x float64) int {
	a := math.Abs(x)
	if a == 0 {
		return 0
	}
	d := 3 - int(math.Floor(math.Log10(a)))
	if d < 0 {
		d = 0
	}
	return d
}

func trimZeros(s string) string {
	if !strings.Contains(s, ".") {
		return s
	}
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// sortValues orders axis values: numbers numerically first, then strings, then "".
func sortValues(vals []string) {
	sort.SliceStable(vals, func(i, j int) bool { return lessValue(vals[i], vals[j]) })
}

func lessValue(a, b string) bool {
	if a == b {
		return false
	}
	if a == "" || b == "" {
		return b == ""
	}
	fa, ea := strconv.ParseFloat(a, 64)
	fb, eb := strconv.ParseFloat(b, 64)
	switch {
	case ea == nil && eb == nil:
		if fa != fb {
			return fa < fb
		}
		return a < b
	case ea == nil:
		return true
	case eb == nil:
		return false
	}
	return a < b
}

// sameValue compares a row value with a user-typed value, numerically when both are numbers.
func sameValue(have any, want string) bool {
	hs := FormatValue(have)
	if hs == want {
		return true
	}
	hf, ok1 := toFloat(have)
	wf, err := strconv.ParseFloat(strings.TrimSpace(want), 64)
	if ok1 && err == nil {
		return hf == wf
	}
	return strings.EqualFold(hs, want) && (hs == "true" || hs == "false")
}
