package sweep

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-python/gpython/py"
)

func allKnown(string) bool { return true }

func evalSrc(t *testing.T, src string, vars map[string]any) (any, error) {
	t.Helper()
	x, err := CompileExpr(src, func(n string) bool { _, ok := vars[n]; return ok })
	if err != nil {
		return nil, err
	}
	return NewEvaluator().Eval(x, vars)
}

func TestExprValues(t *testing.T) {
	vars := map[string]any{"op": "gdn", "chunk_size": int64(64), "K": int64(256), "T": int64(4096), "constraint": "none", "x": 1.5}
	cases := []struct {
		src  string
		want any
	}{
		{"chunk_size * K <= 16384", true},
		{"chunk_size * K <= 16383", false},
		{"not (op == 'gdn' and constraint != 'none')", true},
		{"32768 // T", int64(8)},
		{"max(1, 32768 // T) * T", int64(32768)},
		{"min(K, 128)", int64(128)},
		{"x * 2", 3.0},
		{"op in ('mdn', 'gdn')", true},
		{"op[0] + 'x'", "gx"},
		{"len(op) + abs(-2) + round(2.6) + int('3') + sum(range(4))", int64(3 + 2 + 3 + 3 + 6)},
		{"'a' if T > 2048 else 'b'", "a"},
		{"2 ** 10", int64(1024)},
		{"1 << 4", int64(16)},
		{"all([K > 0, T > 0]) and any([False, True])", true},
		{"str(K) + '-' + str(bool(0))", "256-False"},
		{"float(T) / 2", 2048.0},
		{"None", nil},
		{"round(2.5) + round(3.5) + round(-2.6)", int64(2 + 4 - 3)},
		{"round(2.567, 1)", 2.6},
		{"bool(0) or bool('x')", true},
		{"(chunk_size\n\t    * 2)", int64(128)},
	}
	for _, c := range cases {
		got, err := evalSrc(t, c.src, vars)
		if err != nil {
			t.Errorf("%s: %v", c.src, err)
			continue
		}
		if got != c.want {
			t.Errorf("%s = %#v, want %#v", c.src, got, c.want)
		}
	}
}

// Imports, attribute access, loops and calls outside the whitelist are refused before anything runs.
func TestExprRefused(t *testing.T) {
	cases := map[string]string{
		"__import__('os').system('true')": "only the safe builtins can be called",
		"import os":                       "syntax error",
		"exec('import os')":               `calling "exec" is not allowed`,
		"eval('1')":                       `calling "eval" is not allowed`,
		"open('/etc/passwd')":             `calling "open" is not allowed`,
		"getattr(K, 'real')":              `calling "getattr" is not allowed`,
		"K.real":                          "attribute access",
		"().__class__.__bases__":          "attribute access",
		"[x for x in range(10)]":          "comprehensions",
		"sum(x for x in range(10))":       "comprehensions",
		"(lambda: 1)()":                   "lambda",
		"min(*[1, 2])":                    "star",
		"round(2.5, ndigits=1)":           "keyword",
		"_secret":                         "reserved",
		"__mdn_mul(1, 2)":                 "not allowed",
		"nope + 1":                        `unknown name "nope"`,
		"range":                           "can only be called",
		"K +":                             "syntax error",
		"{'a': 1}":                        "Dict is not allowed",
		"1e999":                           "out of range",
		"while True: pass":                "syntax error",
	}
	for src, want := range cases {
		_, err := CompileExpr(src, func(n string) bool { return n == "K" })
		if err == nil {
			t.Errorf("%q compiled; want an error containing %q", src, want)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %q does not contain %q", src, err, want)
		}
	}
}

// Expressions that would run for ever or blow up memory fail fast with a bound, not a hang.
func TestExprBounded(t *testing.T) {
	vars := map[string]any{"K": int64(256), "op": "mdn"}
	cases := map[string]string{
		"sum(range(10**12))":      "range longer",
		"10 ** 10 ** 10":          "too large",
		"2 ** K ** K":             "too large",
		"1 << 10**9":              "too large",
		"'a' * 10**9":             "too large",
		"op * 10**9":              "too large",
		"(1, 2) * 10**7":          "too large",
		"K * 10**2000 * 10**2000": "too large",
		"range(1, 10, 0)":         "must not be zero",
		"1 / 0":                   "ZeroDivisionError",
		"int('x')":                "ValueError",
	}
	for src, want := range cases {
		start := time.Now()
		_, err := evalSrc(t, src, vars)
		if err == nil {
			t.Errorf("%q evaluated; want an error containing %q", src, want)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %q does not contain %q", src, err, want)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%q took %s", src, d)
		}
	}
}

// The time budget is the backstop: code that runs too long is abandoned and the evaluator stays usable.
func TestExprTimeBudget(t *testing.T) {
	// Compile a slow expression directly, bypassing the checker (which would refuse a loop), to test the budget.
	code, err := py.Compile("sum([i for i in range(3000000)])", "<test>", py.EvalMode, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	ev := &Evaluator{Budget: 20 * time.Millisecond}
	ev.context()
	delete(ev.ctx.Store().Builtins.Globals, "range") // the unbounded range for this test only
	ev.ctx.Store().Builtins.Globals["range"] = py.RangeType
	start := time.Now()
	_, err = ev.evalCode(code, nil)
	if !errors.Is(err, ErrBudget) {
		t.Fatalf("want ErrBudget, got %v", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("budget of 20ms enforced after %s", d)
	}
	x, err := CompileExpr("1 + 1", allKnown)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := ev.Eval(x, nil); err != nil || v != int64(2) {
		t.Fatalf("after a timeout: %v, %v", v, err)
	}
}

func TestExprNamesAndTypes(t *testing.T) {
	x, err := CompileExpr("B * T + min(K, V)", allKnown)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(x.Names, ","); got != "B,K,T,V" {
		t.Fatalf("names %s", got)
	}
	_, err = evalSrc(t, "(1, 2)", map[string]any{})
	if err == nil || !strings.Contains(err.Error(), "not a number") {
		t.Fatalf("tuple result: %v", err)
	}
}
