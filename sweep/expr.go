package sweep

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"sort"
	"strings"
	"time"

	"github.com/go-python/gpython/ast"
	pyparser "github.com/go-python/gpython/parser"
	"github.com/go-python/gpython/py"
	_ "github.com/go-python/gpython/stdlib" // wires py.NewContext and the builtins module
)

// Expressions (`where` filters and `[derive]` values) are Python expressions run by gpython, locked down:
//
//  1. the source is parsed and every AST node is checked against a whitelist: names, literals, arithmetic,
//     comparisons, boolean logic, `x if c else y`, tuples/lists/sets, subscripts and calls of the safe builtins.
//     No attribute access, no lambda, no comprehension or generator (hence no loop), no keyword or star
//     arguments, no name starting with "_" and no name that is neither a known variable nor a safe builtin;
//  2. the checked tree is printed back with `*`, `**` and `<<` replaced by calls of hidden guards that refuse
//     results above a size bound, and compiled by gpython;
//  3. it runs in a gpython context whose builtins module holds only the safe builtins (range bounded in size),
//     in a goroutine with a time budget. Steps (1) and (2) already bound the work; the budget is the backstop.

// SafeBuiltins are the only functions an expression may call.
var SafeBuiltins = []string{"abs", "all", "any", "bool", "float", "int", "len", "max", "min", "range", "round", "str", "sum"}

const (
	maxExprLen   = 2000    // characters
	maxExprNodes = 400     // AST nodes
	maxIntBits   = 4096    // largest integer a guarded operator may produce
	maxSeqLen    = 100_000 // longest string/tuple/list made by repetition, and longest range
)

// DefaultBudget is how long one evaluation may take.
const DefaultBudget = 2 * time.Second

// ExprError is a refused or failed expression; the caller adds file:line.
type ExprError struct {
	Src string
	Msg string
}

func (e *ExprError) Error() string { return fmt.Sprintf("%s (in %q)", e.Msg, e.Src) }

// ErrBudget is returned when an evaluation runs past its time budget.
var ErrBudget = errors.New("expression ran past its time budget")

// Expr is a checked, compiled expression.
type Expr struct {
	Src   string
	Names []string // the variables it reads (sorted)
	code  *py.Code
}

// CompileExpr checks src and compiles it. known reports whether a name is a variable the expression may read.
func CompileExpr(src string, known func(string) bool) (*Expr, error) {
	fail := func(format string, a ...any) (*Expr, error) {
		return nil, &ExprError{Src: src, Msg: fmt.Sprintf(format, a...)}
	}
	if strings.TrimSpace(src) == "" {
		return fail("empty expression")
	}
	if len(src) > maxExprLen {
		return fail("expression longer than %d characters", maxExprLen)
	}
	// gpython's parser wants one logical line; TOML multi-line strings are joined.
	one := strings.Join(strings.Fields(src), " ")
	tree, err := pyparser.ParseString(one, py.EvalMode)
	if err != nil {
		return fail("syntax error: %s", pyErrString(err))
	}
	expr, ok := tree.(*ast.Expression)
	if !ok {
		return fail("not an expression")
	}
	c := &checker{known: known, names: map[string]bool{}}
	var b strings.Builder
	if err := c.write(&b, expr.Body); err != nil {
		return fail("%v", err)
	}
	if c.nodes > maxExprNodes {
		return fail("expression has more than %d parts", maxExprNodes)
	}
	code, err := py.Compile(b.String(), "<expr>", py.EvalMode, 0, true)
	if err != nil {
		return fail("cannot compile: %s", pyErrString(err))
	}
	names := make([]string, 0, len(c.names))
	for n := range c.names {
		names = append(names, n)
	}
	sort.Strings(names)
	return &Expr{Src: src, Names: names, code: code}, nil
}

// checker walks the AST, refusing anything outside the whitelist, and prints the guarded source.
type checker struct {
	known func(string) bool
	names map[string]bool
	nodes int
}

var safeBuiltin = func() map[string]bool {
	m := map[string]bool{}
	for _, n := range SafeBuiltins {
		m[n] = true
	}
	return m
}()

var binOps = map[ast.OperatorNumber]string{
	ast.Add: "+", ast.Sub: "-", ast.Div: "/", ast.Modulo: "%", ast.FloorDiv: "//",
	ast.RShift: ">>", ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&",
}

var guardedOps = map[ast.OperatorNumber]string{ast.Mult: "__mdn_mul", ast.Pow: "__mdn_pow", ast.LShift: "__mdn_lshift"}

var cmpOps = map[ast.CmpOp]string{
	ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
	ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
}

var unaryOps = map[ast.UnaryOpNumber]string{ast.Invert: "~", ast.Not: "not ", ast.UAdd: "+", ast.USub: "-"}

func (c *checker) list(b *strings.Builder, xs []ast.Expr) error {
	for i, x := range xs {
		if i > 0 {
			b.WriteString(", ")
		}
		if err := c.write(b, x); err != nil {
			return err
		}
	}
	return nil
}

func (c *checker) write(b *strings.Builder, node ast.Expr) error {
	c.nodes++
	switch n := node.(type) {
	case *ast.BoolOp:
		op := " and "
		if n.Op == ast.Or {
			op = " or "
		}
		b.WriteString("(")
		for i, v := range n.Values {
			if i > 0 {
				b.WriteString(op)
			}
			if err := c.write(b, v); err != nil {
				return err
			}
		}
		b.WriteString(")")
	case *ast.BinOp:
		if g, ok := guardedOps[n.Op]; ok {
			b.WriteString(g + "(")
			if err := c.list(b, []ast.Expr{n.Left, n.Right}); err != nil {
				return err
			}
			b.WriteString(")")
			return nil
		}
		op, ok := binOps[n.Op]
		if !ok {
			return fmt.Errorf("operator %v is not allowed", n.Op)
		}
		b.WriteString("(")
		if err := c.write(b, n.Left); err != nil {
			return err
		}
		b.WriteString(" " + op + " ")
		if err := c.write(b, n.Right); err != nil {
			return err
		}
		b.WriteString(")")
	case *ast.UnaryOp:
		op, ok := unaryOps[n.Op]
		if !ok {
			return fmt.Errorf("operator %v is not allowed", n.Op)
		}
		b.WriteString("(" + op)
		if err := c.write(b, n.Operand); err != nil {
			return err
		}
		b.WriteString(")")
	case *ast.Compare:
		b.WriteString("(")
		if err := c.write(b, n.Left); err != nil {
			return err
		}
		for i, op := range n.Ops {
			s, ok := cmpOps[op]
			if !ok {
				return fmt.Errorf("comparison %v is not allowed", op)
			}
			b.WriteString(" " + s + " ")
			if err := c.write(b, n.Comparators[i]); err != nil {
				return err
			}
		}
		b.WriteString(")")
	case *ast.IfExp:
		b.WriteString("(")
		if err := c.write(b, n.Body); err != nil {
			return err
		}
		b.WriteString(" if ")
		if err := c.write(b, n.Test); err != nil {
			return err
		}
		b.WriteString(" else ")
		if err := c.write(b, n.Orelse); err != nil {
			return err
		}
		b.WriteString(")")
	case *ast.Call:
		name, ok := n.Func.(*ast.Name)
		if !ok {
			return fmt.Errorf("only the safe builtins can be called (%s)", strings.Join(SafeBuiltins, ", "))
		}
		if !safeBuiltin[string(name.Id)] {
			return fmt.Errorf("calling %q is not allowed; callable: %s", string(name.Id), strings.Join(SafeBuiltins, ", "))
		}
		if len(n.Keywords) > 0 || n.Starargs != nil || n.Kwargs != nil {
			return fmt.Errorf("keyword and star arguments are not allowed (in the call of %s)", name.Id)
		}
		c.nodes++
		b.WriteString(string(name.Id) + "(")
		if err := c.list(b, n.Args); err != nil {
			return err
		}
		b.WriteString(")")
	case *ast.Name:
		id := string(n.Id)
		if strings.HasPrefix(id, "_") {
			return fmt.Errorf("name %q is not allowed (names starting with _ are reserved)", id)
		}
		if safeBuiltin[id] {
			return fmt.Errorf("builtin %q can only be called", id)
		}
		if c.known != nil && !c.known(id) {
			return fmt.Errorf("unknown name %q", id)
		}
		c.names[id] = true
		b.WriteString(id)
	case *ast.Num:
		switch v := n.N.(type) {
		case py.Int, *py.BigInt:
			if bitLen(v) > maxIntBits {
				return fmt.Errorf("integer literal too large")
			}
		case py.Float:
			if math.IsInf(float64(v), 0) || math.IsNaN(float64(v)) {
				return fmt.Errorf("float literal out of range")
			}
		default:
			return fmt.Errorf("only int and float literals are allowed")
		}
		r, err := py.ReprAsString(n.N)
		if err != nil {
			return err
		}
		b.WriteString(r)
	case *ast.Str:
		r, err := py.ReprAsString(n.S)
		if err != nil {
			return err
		}
		b.WriteString(r)
	case *ast.NameConstant:
		switch n.Value {
		case py.True:
			b.WriteString("True")
		case py.False:
			b.WriteString("False")
		case py.None:
			b.WriteString("None")
		default:
			return fmt.Errorf("constant %v is not allowed", n.Value)
		}
	case *ast.Tuple:
		b.WriteString("(")
		if err := c.list(b, n.Elts); err != nil {
			return err
		}
		if len(n.Elts) == 1 {
			b.WriteString(",")
		}
		b.WriteString(")")
	case *ast.List:
		b.WriteString("[")
		if err := c.list(b, n.Elts); err != nil {
			return err
		}
		b.WriteString("]")
	case *ast.Set:
		b.WriteString("{")
		if err := c.list(b, n.Elts); err != nil {
			return err
		}
		b.WriteString("}")
	case *ast.Subscript:
		if err := c.write(b, n.Value); err != nil {
			return err
		}
		b.WriteString("[")
		switch s := n.Slice.(type) {
		case *ast.Index:
			if err := c.write(b, s.Value); err != nil {
				return err
			}
		case *ast.Slice:
			for i, part := range []ast.Expr{s.Lower, s.Upper, s.Step} {
				if i > 0 {
					b.WriteString(":")
				}
				if part != nil {
					if err := c.write(b, part); err != nil {
						return err
					}
				}
			}
		default:
			return fmt.Errorf("extended slices are not allowed")
		}
		b.WriteString("]")
	case *ast.Attribute:
		return fmt.Errorf("attribute access (.%s) is not allowed", n.Attr)
	case *ast.Lambda:
		return fmt.Errorf("lambda is not allowed")
	case *ast.ListComp, *ast.SetComp, *ast.DictComp, *ast.GeneratorExp:
		return fmt.Errorf("comprehensions and generators are not allowed (no loops)")
	case *ast.Yield, *ast.YieldFrom:
		return fmt.Errorf("yield is not allowed")
	case *ast.Starred:
		return fmt.Errorf("star expressions are not allowed")
	default:
		return fmt.Errorf("%s is not allowed", strings.TrimPrefix(fmt.Sprintf("%T", node), "*ast."))
	}
	return nil
}

// Evaluator runs compiled expressions in one locked-down gpython context. Not safe for concurrent use.
type Evaluator struct {
	Budget time.Duration // per evaluation; DefaultBudget when zero
	ctx    py.Context
}

// NewEvaluator returns an evaluator with the default budget.
func NewEvaluator() *Evaluator { return &Evaluator{Budget: DefaultBudget} }

func (e *Evaluator) context() py.Context {
	if e.ctx == nil {
		ctx := py.NewContext(py.ContextOpts{})
		g := ctx.Store().Builtins.Globals
		keep := map[string]py.Object{}
		for _, n := range SafeBuiltins {
			keep[n] = g[n]
		}
		for k := range g {
			delete(g, k)
		}
		for k, v := range keep {
			g[k] = v
		}
		g["range"] = py.MustNewMethod("range", boundedRange, 0, "range, at most 100000 elements")
		// gpython 0.2's round truncates and its bool cannot be called: replaced by Python 3's semantics.
		g["round"] = py.MustNewMethod("round", pyRound, 0, "round half to even")
		g["bool"] = py.MustNewMethod("bool", pyBool, 0, "truth value")
		g["__mdn_mul"] = py.MustNewMethod("__mdn_mul", guardedMul, 0, "")
		g["__mdn_pow"] = py.MustNewMethod("__mdn_pow", guardedPow, 0, "")
		g["__mdn_lshift"] = py.MustNewMethod("__mdn_lshift", guardedLshift, 0, "")
		e.ctx = ctx
	}
	return e.ctx
}

// Eval runs x with vars as its globals and returns the value as int64, float64, string, bool or nil.
func (e *Evaluator) Eval(x *Expr, vars map[string]any) (any, error) {
	obj, err := e.evalCode(x.code, vars)
	if err != nil {
		if errors.Is(err, ErrBudget) {
			return nil, &ExprError{Src: x.Src, Msg: err.Error()}
		}
		return nil, &ExprError{Src: x.Src, Msg: err.Error()}
	}
	v, err := fromPy(obj)
	if err != nil {
		return nil, &ExprError{Src: x.Src, Msg: err.Error()}
	}
	return v, nil
}

func (e *Evaluator) evalCode(code *py.Code, vars map[string]any) (py.Object, error) {
	globals := py.NewStringDict()
	for k, v := range vars {
		o, err := toPy(v)
		if err != nil {
			return nil, fmt.Errorf("variable %s: %w", k, err)
		}
		globals[k] = o
	}
	ctx := e.context()
	type result struct {
		obj py.Object
		err error
	}
	ch := make(chan result, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				ch <- result{err: fmt.Errorf("evaluation failed: %v", r)}
			}
		}()
		obj, err := ctx.RunCode(code, globals, globals, nil)
		ch <- result{obj, err}
	}()
	budget := e.Budget
	if budget <= 0 {
		budget = DefaultBudget
	}
	t := time.NewTimer(budget)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, errors.New(pyErrString(r.err))
		}
		return r.obj, nil
	case <-t.C:
		// The runaway goroutine keeps the old context; later evaluations get a fresh one.
		e.ctx = nil
		return nil, fmt.Errorf("%w (%s)", ErrBudget, budget)
	}
}

func toPy(v any) (py.Object, error) {
	switch x := v.(type) {
	case nil:
		return py.None, nil
	case bool:
		return py.NewBool(x), nil
	case int:
		return py.Int(x), nil
	case int64:
		return py.Int(x), nil
	case float64:
		return py.Float(x), nil
	case string:
		return py.String(x), nil
	}
	return nil, fmt.Errorf("value %v of type %T cannot be given to an expression", v, v)
}

func fromPy(o py.Object) (any, error) {
	switch x := o.(type) {
	case py.Bool:
		return bool(x), nil
	case py.Int:
		return int64(x), nil
	case *py.BigInt:
		bi := (*big.Int)(x)
		if bi.IsInt64() {
			return bi.Int64(), nil
		}
		return nil, fmt.Errorf("result %s does not fit in 64 bits", bi.String())
	case py.Float:
		f := float64(x)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("result is %v", f)
		}
		return f, nil
	case py.String:
		return string(x), nil
	case py.NoneType:
		return nil, nil
	}
	return nil, fmt.Errorf("result of type %s is not a number, string, bool or None", o.Type().Name)
}

// pyErrString renders a gpython error as "TypeName: message" without Go or traceback noise.
func pyErrString(err error) string {
	var exc *py.Exception
	switch x := err.(type) {
	case py.ExceptionInfo:
		if e, ok := x.Value.(*py.Exception); ok {
			exc = e
		}
	case *py.Exception:
		exc = x
	}
	if exc == nil {
		return err.Error()
	}
	msg := ""
	if len(exc.Args.(py.Tuple)) > 0 {
		if s, ok := exc.Args.(py.Tuple)[0].(py.String); ok {
			msg = string(s)
		} else if s, err := py.StrAsString(exc.Args.(py.Tuple)[0]); err == nil {
			msg = s
		}
	}
	if ln, ok := exc.Dict["offset"].(py.Int); ok && exc.Base.Name == "SyntaxError" {
		msg = fmt.Sprintf("%s at column %d", msg, int(ln))
	}
	return exc.Base.Name + ": " + msg
}

// ------------------------------------------------------------------------------------------------ guards

func bitLen(o py.Object) int {
	switch x := o.(type) {
	case py.Bool:
		if x {
			return 1
		}
		return 0
	case py.Int:
		v := int64(x)
		if v < 0 {
			v = -v
		}
		return bits.Len64(uint64(v))
	case *py.BigInt:
		return (*big.Int)(x).BitLen()
	}
	return -1
}

func isInt(o py.Object) bool { return bitLen(o) >= 0 }

func intValue(o py.Object) (int64, bool) {
	switch x := o.(type) {
	case py.Bool:
		if x {
			return 1, true
		}
		return 0, true
	case py.Int:
		return int64(x), true
	case *py.BigInt:
		if (*big.Int)(x).IsInt64() {
			return (*big.Int)(x).Int64(), true
		}
	}
	return 0, false
}

func seqLen(o py.Object) (int, bool) {
	switch x := o.(type) {
	case py.String:
		return len(x), true
	case py.Tuple:
		return len(x), true
	case *py.List:
		return len(x.Items), true
	}
	return 0, false
}

func overflow(what string) error {
	return py.ExceptionNewf(py.OverflowError, "%s: result too large for a sweep expression", what)
}

func guardedMul(_ py.Object, args py.Tuple) (py.Object, error) {
	if len(args) != 2 {
		return nil, py.ExceptionNewf(py.TypeError, "mul takes 2 arguments")
	}
	a, b := args[0], args[1]
	for _, pair := range [][2]py.Object{{a, b}, {b, a}} {
		if n, ok := seqLen(pair[0]); ok && isInt(pair[1]) {
			k, ok := intValue(pair[1])
			if !ok || (k > 0 && int64(n)*k > maxSeqLen) || (k > 0 && n > 0 && k > maxSeqLen) {
				return nil, overflow("repetition")
			}
		}
	}
	if isInt(a) && isInt(b) && bitLen(a)+bitLen(b) > maxIntBits {
		return nil, overflow("multiplication")
	}
	return py.Mul(a, b)
}

func guardedPow(_ py.Object, args py.Tuple) (py.Object, error) {
	if len(args) != 2 {
		return nil, py.ExceptionNewf(py.TypeError, "pow takes 2 arguments")
	}
	a, b := args[0], args[1]
	if isInt(a) && isInt(b) && bitLen(a) > 1 {
		e, ok := intValue(b)
		if !ok || (e > 0 && int64(bitLen(a)-1)*e > maxIntBits) {
			return nil, overflow("power")
		}
	}
	return py.Pow(a, b, py.None)
}

func guardedLshift(_ py.Object, args py.Tuple) (py.Object, error) {
	if len(args) != 2 {
		return nil, py.ExceptionNewf(py.TypeError, "lshift takes 2 arguments")
	}
	a, b := args[0], args[1]
	if isInt(a) && isInt(b) {
		s, ok := intValue(b)
		if !ok || int64(bitLen(a))+s > maxIntBits {
			return nil, overflow("shift")
		}
	}
	return py.Lshift(a, b)
}

func boundedRange(_ py.Object, args py.Tuple) (py.Object, error) {
	if len(args) == 3 {
		if s, ok := intValue(args[2]); ok && s == 0 {
			return nil, py.ExceptionNewf(py.ValueError, "range() arg 3 must not be zero")
		}
	}
	r, err := py.RangeNew(py.RangeType, args, nil)
	if err != nil {
		return nil, err
	}
	n, err := py.Len(r)
	if err != nil {
		return nil, err
	}
	if v, ok := intValue(n); !ok || v > maxSeqLen {
		return nil, py.ExceptionNewf(py.OverflowError, "range longer than %d elements", maxSeqLen)
	}
	return r, nil
}

func pyBool(_ py.Object, args py.Tuple) (py.Object, error) {
	if len(args) == 0 {
		return py.False, nil
	}
	if len(args) != 1 {
		return nil, py.ExceptionNewf(py.TypeError, "bool() takes at most 1 argument")
	}
	return py.MakeBool(args[0])
}

// pyRound is Python 3's round: half to even; round(x) is an int, round(x, n) keeps x's type.
func pyRound(_ py.Object, args py.Tuple) (py.Object, error) {
	if len(args) < 1 || len(args) > 2 {
		return nil, py.ExceptionNewf(py.TypeError, "round() takes 1 or 2 arguments")
	}
	if len(args) == 1 || args[1] == py.None {
		switch x := args[0].(type) {
		case py.Float:
			f := math.RoundToEven(float64(x))
			if math.IsInf(f, 0) || math.IsNaN(f) || math.Abs(f) > 9e18 {
				return nil, py.ExceptionNewf(py.OverflowError, "cannot round %v to an integer", float64(x))
			}
			return py.Int(int64(f)), nil
		default:
			if isInt(x) {
				return x, nil
			}
			return nil, py.ExceptionNewf(py.TypeError, "round() needs a number")
		}
	}
	n, ok := intValue(args[1])
	if !ok || n < -20 || n > 20 {
		return nil, py.ExceptionNewf(py.ValueError, "round() ndigits must be an integer in [-20, 20]")
	}
	switch x := args[0].(type) {
	case py.Float:
		p := math.Pow(10, float64(n))
		return py.Float(math.RoundToEven(float64(x)*p) / p), nil
	default:
		v, ok := intValue(x)
		if !ok {
			return nil, py.ExceptionNewf(py.TypeError, "round() needs a number")
		}
		if n >= 0 {
			return py.Int(v), nil
		}
		p := int64(math.Pow(10, float64(-n)))
		q := float64(v) / float64(p)
		return py.Int(int64(math.RoundToEven(q)) * p), nil
	}
}
