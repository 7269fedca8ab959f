package sweep

import (
	"strings"
	"testing"
)

const goodSweep = `# a comment
name = "t1"
timeout = "30s"
repeats = 2
where = "chunk_size * K <= 8192 and not (op == 'gdn' and constraint != 'none')"

[axes]
op = ["mdn", "gdn"]
chunk_size = [32, 64]
constraint = ["layer_init", "none"]
shape = [
  {H = 2, K = 64, V = 64},
  {H = 4, K = 256, V = 128},
]
T = [64, 128]
mode = "fwd"
dtype = ["bf16"]

[derive]
B = "max(1, 256 // T)"
tokens = "B * T"

[bench]
rep_ms = 50
check_T = 64
`

func mustParse(t *testing.T, src string) *File {
	t.Helper()
	f, err := Parse("sweeps/t.toml", []byte(src))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return f
}

func TestExpandGrid(t *testing.T) {
	f := mustParse(t, goodSweep)
	plan, err := f.Expand()
	if err != nil {
		t.Fatal(err)
	}
	// Count by hand: op x cs x constraint x shape x T = 2*2*2*2*2 = 32 combinations.
	// where drops cs*K > 8192 (K=256 with cs=64: 8 combos) and gdn with layer_init (cs,shape,T: 8 combos,
	// of which 2 overlap: gdn/layer_init/cs64/K256). Kept: 32 - 8 - 8 + 2 = 18; x2 repeats = 36.
	if len(plan.Points) != 36 || plan.Filtered != 14 {
		t.Fatalf("points %d filtered %d, want 36 and 14", len(plan.Points), plan.Filtered)
	}
	ids := map[string]bool{}
	for _, p := range plan.Points {
		if ids[p.ID] {
			t.Fatalf("duplicate id %s", p.ID)
		}
		ids[p.ID] = true
		v := p.Values
		if v["B"].(int64)*v["T"].(int64) != 256 || v["tokens"] != int64(256) {
			t.Fatalf("derive: %v", v)
		}
		if v["dtype"] != "bfloat16" || v["BK"] != "auto" || v["mode"] != "fwd" {
			t.Fatalf("defaults/aliases: %v", v)
		}
		if v["chunk_size"].(int64)*v["K"].(int64) > 8192 {
			t.Fatalf("where not applied: %v", v)
		}
	}
	// The first axis is the outermost loop; repeats are innermost.
	p0, p1 := plan.Points[0].Values, plan.Points[1].Values
	if p0["op"] != "mdn" || p0["repeat"] != int64(0) || p1["repeat"] != int64(1) || p0["T"] != int64(64) {
		t.Fatalf("order: %v / %v", p0, p1)
	}
	if plan.Points[0].Variant != plan.Points[1].Variant || plan.Points[0].ID == plan.Points[1].ID {
		t.Fatal("repeats share the variant but not the point id")
	}
	if cols := strings.Join(plan.Columns(), ","); cols != "op,chunk_size,constraint,dtype,mode,B,T,H,K,V,tokens,repeat" {
		t.Fatalf("columns %s", cols)
	}
}

// Point ids and variants depend on values only: reordering axes or keys changes nothing.
func TestHashesStable(t *testing.T) {
	a := mustParse(t, goodSweep)
	reordered := strings.Replace(goodSweep, "op = [\"mdn\", \"gdn\"]\nchunk_size = [32, 64]", "chunk_size = [32, 64]\nop = [\"mdn\", \"gdn\"]", 1)
	b := mustParse(t, reordered)
	pa, _ := a.Expand()
	pb, _ := b.Expand()
	set := map[string]string{}
	for _, p := range pa.Points {
		set[p.ID] = p.Variant
	}
	if len(pb.Points) != len(pa.Points) {
		t.Fatal("count differs")
	}
	for _, p := range pb.Points {
		if v, ok := set[p.ID]; !ok || v != p.Variant {
			t.Fatalf("point %v not found with the same ids", p.Values)
		}
	}
	// The variant is the launch spec only: shape and mode do not change it; dtype does.
	v := map[string]any{"op": "mdn", "chunk_size": int64(64), "BK": "auto", "BV": "auto", "num_warps": "auto",
		"num_stages": "auto", "constraint": "trig", "dtype": "bfloat16", "T": int64(1), "mode": "fwd"}
	h1 := VariantHash(v)
	v["T"], v["mode"] = int64(2), "fwdbwd"
	if VariantHash(v) != h1 {
		t.Fatal("shape/mode changed the variant")
	}
	v["dtype"] = "float32"
	if VariantHash(v) == h1 {
		t.Fatal("dtype did not change the variant")
	}
	if len(h1) != HashLen {
		t.Fatal("hash length")
	}
}

func TestParseErrorsHaveLines(t *testing.T) {
	cases := []struct {
		name, src, want string
	}{
		{"unknown top key", "nmae = 'x'\n[axes]\nop='mdn'\nB=1\nT=1\nH=1\nK=1\nV=1\n", "t.toml:1: nmae: unknown key"},
		{"unknown axis", "[axes]\nop = 'mdn'\nB=1\nT=1\nH=1\nK=1\nV=1\nchunk = [16]\n", "t.toml:8: axes.chunk[0]: unknown axis \"chunk\""},
		{"wrong type", "[axes]\nop = 'mdn'\nB=1\nT=[1, 'x']\nH=1\nK=1\nV=1\n", "t.toml:4: axes.T[1]: T must be an integer, got the string \"x\""},
		{"bad op", "[axes]\nop = ['mdn', 'mdnn']\nB=1\nT=1\nH=1\nK=1\nV=1\n", "t.toml:2: axes.op[1]: op: \"mdnn\" is not one of"},
		{"bad chunk", "[axes]\nop='mdn'\nchunk_size=[48]\nB=1\nT=1\nH=1\nK=1\nV=1\n", "t.toml:3: axes.chunk_size[0]: chunk_size: 48 is not one of"},
		{"bad group field", "[axes]\nop='mdn'\nshape=[{H=1,K=1,V=1,Q=2}]\nB=1\nT=1\n", "t.toml:3: axes.shape[0].Q: unknown field \"Q\""},
		{"missing field", "[axes]\nop='mdn'\nB=1\nT=1\nH=1\nK=1\n", "field V (value head dim) is required"},
		{"bad where", "where = \"__import__('os')\"\n[axes]\nop='mdn'\nB=1\nT=1\nH=1\nK=1\nV=1\n", "t.toml:1: where: calling \"__import__\" is not allowed"},
		{"where loop", "\nwhere = 'any([x for x in range(10)])'\n[axes]\nop='mdn'\nB=1\nT=1\nH=1\nK=1\nV=1\n", "t.toml:2: where: comprehensions"},
		{"where under axes", "[axes]\nop='mdn'\nB=1\nT=1\nH=1\nK=1\nV=1\n\nwhere = 'True'\n", "t.toml:9: axes.where[0]: \"where\" is a top-level key: put it above"},
		{"derive unknown name", "[axes]\nop='mdn'\nT=1\nH=1\nK=1\nV=1\n[derive]\nB = \"TT * 2\"\n", "t.toml:8: derive.B: unknown name \"TT\""},
		{"derive order", "[axes]\nop='mdn'\nT=1\nH=1\nK=1\nV=1\n[derive]\nx = \"B * 2\"\nB = \"T\"\n", "t.toml:8: derive.x: unknown name \"B\""},
		{"derive overrides axis", "[axes]\nop='mdn'\nB=1\nT=1\nH=1\nK=1\nV=1\n[derive]\nT = \"2\"\n", "t.toml:9: derive.T: T is already an axis"},
		{"bench key", "[axes]\nop='mdn'\nB=1\nT=1\nH=1\nK=1\nV=1\n[bench]\nrepms = 3\n", "t.toml:9: bench.repms: unknown key"},
		{"bench type", "[axes]\nop='mdn'\nB=1\nT=1\nH=1\nK=1\nV=1\n[bench]\ncheck = 'yes'\n", "t.toml:9: bench.check: must be true or false"},
		{"timeout", "timeout = '10 minutes'\n[axes]\nop='mdn'\nB=1\nT=1\nH=1\nK=1\nV=1\n", "t.toml:1: timeout: \"10 minutes\" is not a positive duration"},
		{"toml syntax", "[axes]\nop = [\n'mdn'\n", "t.toml:"},
		{"duplicate", "[axes]\nop=['mdn','mdn']\nB=1\nT=1\nH=1\nK=1\nV=1\n", "t.toml:2: axes.op[1]: duplicate value"},
		{"set twice", "[axes]\nop='mdn'\nB=1\nT=1\nH=1\nK=1\nV=1\nshape=[{H=2,K=2,V=2}]\n", "t.toml:8: axes.shape: field H is already set by axis \"H\""},
		{"constraint", "[axes]\nop='mdn'\nconstraint=['stress_gap_x']\nB=1\nT=1\nH=1\nK=1\nV=1\n", "t.toml:3: axes.constraint[0]: constraint: \"stress_gap_x\" is not a gate distribution"},
	}
	for _, c := range cases {
		_, err := Parse("sweeps/t.toml", []byte(c.src))
		if err == nil {
			t.Errorf("%s: parsed; want %q", c.name, c.want)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s:\n got %q\nwant %q", c.name, err, c.want)
		}
	}
}

func TestRuntimeErrorsNamePoint(t *testing.T) {
	src := "[axes]\nop='mdn'\nT=[64, 0]\nH=1\nK=1\nV=1\n[derive]\nB = \"128 // T\"\n"
	// T=0 is refused as an axis value before any expression runs.
	if _, err := Parse("sweeps/t.toml", []byte(src)); err == nil || !strings.Contains(err.Error(), "t.toml:3: axes.T[1]") {
		t.Fatalf("want axis error, got %v", err)
	}
	src = "[axes]\nop='mdn'\nT=[64, 256]\nH=1\nK=1\nV=1\n[derive]\nB = \"128 // T\"\n"
	f := mustParse(t, src)
	_, err := f.Expand()
	if err == nil || !strings.Contains(err.Error(), "t.toml:8: derive.B: B: 0 is outside [1, 1048576], at point op=mdn") ||
		!strings.Contains(err.Error(), "T=256") {
		t.Fatalf("got %v", err)
	}
	src = "where = 'T'\n[axes]\nop='mdn'\nT=[64]\nB=1\nH=1\nK=1\nV=1\n"
	f = mustParse(t, src)
	if _, err := f.Expand(); err == nil || !strings.Contains(err.Error(), "t.toml:1: where: must give True or False") {
		t.Fatalf("got %v", err)
	}
}

func TestKeyLines(t *testing.T) {
	src := `a = 1 # x
s = """
b = 2
"""
[t]
"q k" . z = [1,
  2]
y = {c = 1}
[[arr]]
w = 'it''s'
`
	kl := scanKeyLines(src)
	want := map[string]int{"a": 1, "s": 2, "t": 5, "t.q k.z": 6, "t.y": 8, "arr.w": 10}
	for k, l := range want {
		if kl[k] != l {
			t.Errorf("%s: line %d, want %d (all: %v)", k, kl[k], l, kl)
		}
	}
	if _, ok := kl["b"]; ok {
		t.Error("key inside a multi-line string")
	}
	if kl.line("t.y.c") != 8 || kl.line("t.q k.z[1]") != 6 {
		t.Error("prefix fallback")
	}
}

const genericSweep = `name = "g"
task = "mqar"
seed = 3
where = "model == 'mdn' or constraint == 'none'"
[axes]
model = ["mdn", "gdn"]
constraint = ["trig", "none"]
split = [{seq_len = 64, num_pairs = 4}, {seq_len = 128, num_pairs = 8}]
lr = [1e-3]
[derive]
batch_size = "64 if seq_len <= 64 else 32"
[mqar]
vocab_size = 256
test_splits = [{seq_len = 256, num_pairs = 16}]
`

// A task other than bench/verify: free axes, derived values flat, its [<task>] table passed whole.
func TestGenericTask(t *testing.T) {
	f := mustParse(t, genericSweep)
	if !f.Generic || f.Job != "mqar" || f.TaskParams["vocab_size"] != int64(256) {
		t.Fatalf("file %+v", f)
	}
	plan, err := f.Expand()
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Points) != 6 || plan.Filtered != 2 { // gdn only with constraint none
		t.Fatalf("points %d filtered %d", len(plan.Points), plan.Filtered)
	}
	if cols := strings.Join(plan.Columns(), ","); cols != "model,constraint,num_pairs,seq_len,lr,batch_size" {
		t.Fatalf("columns %s", cols)
	}
	p := plan.Points[0]
	params := JobParams(f, p, CPUSlot())
	for k, want := range map[string]any{"model": "mdn", "constraint": "trig", "seq_len": int64(64), "num_pairs": int64(4),
		"lr": 1e-3, "batch_size": int64(64), "vocab_size": int64(256), "seed": int64(3), "device": "cpu", "task": "mqar",
		"point": p.ID, "variant": p.Variant, "repeat": int64(0)} {
		if params[k] != want {
			t.Errorf("params[%s] = %#v, want %#v", k, params[k], want)
		}
	}
	if _, ok := params["chunk_size"]; ok {
		t.Error("kernel defaults leaked into a generic task")
	}
	if ts, ok := params["test_splits"].([]any); !ok || len(ts) != 1 {
		t.Errorf("test_splits %#v", params["test_splits"])
	}
	// Every value enters the id; the variant ignores only the repeat.
	q := plan.Points[1]
	if p.ID == q.ID || p.Variant == q.Variant {
		t.Fatal("distinct points share hashes")
	}
}

func TestGenericTaskErrors(t *testing.T) {
	cases := map[string]string{
		"task = 'mqar'\n[axes]\nmodel = ['mdn']\n[bench]\nrep_ms = 1\n": "t.toml:4: bench: [bench] belongs to the bench and verify tasks",
		"task = 'mqar'\n[axes]\nmodel = ['mdn']\n[train]\nx = 1\n":      "t.toml:4: train: unknown key",
		"task = 'mqar'\n[axes]\nmodel = [['a']]\n":                      "t.toml:3: axes.model[0]: model must be a number, string or boolean, got an array",
		"task = 'mqar'\n[axes]\npoint = ['a']\n":                        `"point" cannot name an axis`,
		"task = 'mqar'\n[axes]\nm = [1]\n[derive]\nseed = 'm'\n":        `t.toml:5: derive.seed: "seed" is reserved`,
		"task = 'MQAR'\n[axes]\nm = [1]\n":                              "t.toml:1: task: \"MQAR\" is not a task name",
		"task = 'mqar'\njob = 'bench'\n[axes]\nm = [1]\n":               "t.toml:2: job: task and job disagree",
		"task = 'mqar'\nwhere = 'mm > 1'\n[axes]\nm = [1]\n":            `t.toml:2: where: unknown name "mm"`,
		"task = 'mqar'\n[axes]\nm = [1]\n[mqar]\n":                      "", // an empty task table is fine
	}
	for src, want := range cases {
		_, err := Parse("sweeps/t.toml", []byte(src))
		if want == "" {
			if err != nil {
				t.Errorf("%q: %v", src, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q:\n got %v\nwant %s", src, err, want)
		}
	}
}

// A `fwd` point whose family also has a `fwdbwd` point runs the forward+backward gate (check_mode), so the worker
// computes one gate for both; a `fwd` point without such a sibling (here: the op filtered to fwd only) keeps its
// own forward gate, and `fwdbwd` points never carry check_mode.
func TestFwdPointsShareTheBackwardGateOfTheirFamily(t *testing.T) {
	f := mustParse(t, `name = "share"
where = "not (op == 'gdn' and mode == 'fwdbwd')"
[axes]
op = ["mdn", "gdn"]
T = [64, 128]
mode = ["fwd", "fwdbwd"]
H = 2
K = 32
V = 32
[derive]
B = "256 // T"
`)
	plan, err := f.Expand()
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Points) != 6 {
		t.Fatalf("points %d, want 6", len(plan.Points))
	}
	for _, p := range plan.Points {
		params := JobParams(f, p, CPUSlot())
		cm, has := params["check_mode"]
		switch {
		case p.Values["mode"] == "fwdbwd":
			if has {
				t.Errorf("fwdbwd point %v has check_mode %v", p.Values, cm)
			}
		case p.Values["op"] == "mdn":
			if cm != "fwdbwd" {
				t.Errorf("mdn fwd point %v: check_mode %v, want fwdbwd", p.Values, cm)
			}
		default:
			if has {
				t.Errorf("gdn fwd point without a fwdbwd sibling has check_mode %v", cm)
			}
		}
	}
}
