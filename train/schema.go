// Package train resolves a training run (configs/*.toml + --set overrides) into the fully specified `train` job
// of the Python runner, validates it with file:line errors, computes the parameter count, and builds the launch
// (one CPU process, or torchrun on one GPU, all GPUs of the node, or several nodes with a rendezvous).
package train

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// Kind is the type of a config value.
type Kind int

const (
	KInt Kind = iota
	KFloat
	KString
	KBool
	KFloatList
	KIntList
	KNullFloat  // a number or "none"
	KNullInt    // an integer or "none"
	KNullString // a string or "none"
	KNullBool   // true, false or "none"
	KProcs      // "auto" or an integer >= 1
)

func (k Kind) want() string {
	switch k {
	case KInt:
		return "an integer"
	case KFloat:
		return "a number"
	case KString:
		return "a string"
	case KBool:
		return "true or false"
	case KFloatList:
		return "a list of numbers"
	case KIntList:
		return "a list of integers"
	case KNullFloat:
		return `a number or "none"`
	case KNullInt:
		return `an integer or "none"`
	case KNullString:
		return `a string or "none"`
	case KNullBool:
		return `true, false or "none"`
	case KProcs:
		return `"auto" or an integer >= 1`
	}
	return "a value"
}

// Field is one key of the run config. Values are int64, float64, string, bool, []float64, []int64 or nil (none).
type Field struct {
	Section string
	Name    string
	Kind    Kind
	Default any
	Check   func(v any) string // "" when fine, else what is expected
	Help    string
}

// Key is "section.name".
func (f *Field) Key() string { return f.Section + "." + f.Name }

// Sections in the order they are written.
var Sections = []string{"model", "train", "optim", "data", "parallel"}

func oneOf(opts ...string) func(any) string {
	return func(v any) string {
		s, _ := v.(string)
		for _, o := range opts {
			if s == o {
				return ""
			}
		}
		return "one of " + strings.Join(opts, ", ")
	}
}

func atLeast(n float64) func(any) string {
	return func(v any) string {
		if x, ok := num(v); ok && x < n {
			if n == math.Trunc(n) {
				return fmt.Sprintf(">= %g", n)
			}
			return fmt.Sprintf(">= %g", n)
		}
		return ""
	}
}

func positive(v any) string {
	if x, ok := num(v); ok && x <= 0 {
		return "> 0"
	}
	return ""
}

func inRange(lo, hi float64) func(any) string {
	return func(v any) string {
		if x, ok := num(v); ok && (x < lo || x > hi) {
			return fmt.Sprintf("in [%g, %g]", lo, hi)
		}
		return ""
	}
}

func num(v any) (float64, bool) {
	switch x := v.(type) {
	case int64:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// Schema lists every key. The model keys and defaults mirror mdn.models.ModelConfig, the others
// mdn.train.config and mdn.data.DataConfig (a test compares them with Python).
var Schema = []*Field{
	// model: mdn.models.ModelConfig
	{Section: "model", Name: "arch", Kind: KString, Default: "mdn", Check: oneOf("mdn", "gdn", "kda", "mamba2", "transformer"), Help: "mixer of the non-attention layers"},
	{Section: "model", Name: "vocab_size", Kind: KInt, Default: int64(50257), Check: atLeast(1)},
	{Section: "model", Name: "hidden_size", Kind: KInt, Default: int64(1024), Check: atLeast(1)},
	{Section: "model", Name: "num_layers", Kind: KInt, Default: int64(21), Check: atLeast(1)},
	{Section: "model", Name: "num_heads", Kind: KInt, Default: int64(6), Check: atLeast(1)},
	{Section: "model", Name: "head_dim", Kind: KInt, Default: int64(128), Check: atLeast(1)},
	{Section: "model", Name: "expand_v", Kind: KFloat, Default: 2.0, Check: positive},
	{Section: "model", Name: "conv_size", Kind: KInt, Default: int64(4), Check: atLeast(1)},
	{Section: "model", Name: "use_short_conv", Kind: KBool, Default: true},
	{Section: "model", Name: "use_output_gate", Kind: KBool, Default: true},
	{Section: "model", Name: "output_gate_act", Kind: KNullString, Default: nil, Check: oneOf("sigmoid", "swish", "silu")},
	{Section: "model", Name: "mixer_impl", Kind: KString, Default: "auto", Check: oneOf("auto", "chunk", "fused_recurrent", "torch", "naive", "fla", "reference", "fla_layer")},
	{Section: "model", Name: "chunk_size", Kind: KInt, Default: int64(64), Check: atLeast(1)},
	{Section: "model", Name: "gate_mode", Kind: KString, Default: "trig", Check: oneOf("trig", "clamp", "none", "quadrant"), Help: "gating-constraint mode (spec §5)"},
	{Section: "model", Name: "min_log_mu", Kind: KNullFloat, Default: -2.0, Check: func(v any) string {
		if x, ok := num(v); ok && x > 0 {
			return `<= 0 (log of the momentum floor) or "none"`
		}
		return ""
	}},
	{Section: "model", Name: "tau_factor", Kind: KFloat, Default: 1.0, Check: positive},
	{Section: "model", Name: "use_output_correction", Kind: KBool, Default: true},
	{Section: "model", Name: "use_p_times_alpha", Kind: KBool, Default: true},
	{Section: "model", Name: "state_size", Kind: KInt, Default: int64(128), Check: atLeast(1)},
	{Section: "model", Name: "mamba_expand", Kind: KInt, Default: int64(2), Check: atLeast(1)},
	{Section: "model", Name: "n_groups", Kind: KInt, Default: int64(1), Check: atLeast(1)},
	{Section: "model", Name: "mamba_chunk_size", Kind: KInt, Default: int64(256), Check: atLeast(1)},
	{Section: "model", Name: "use_mlp", Kind: KNullBool, Default: nil},
	{Section: "model", Name: "intermediate_size", Kind: KNullInt, Default: nil, Check: atLeast(1)},
	{Section: "model", Name: "norm_eps", Kind: KFloat, Default: 1e-6, Check: positive},
	{Section: "model", Name: "attn_layers", Kind: KIntList, Default: []int64{}},
	{Section: "model", Name: "attn_num_heads", Kind: KInt, Default: int64(16), Check: atLeast(1)},
	{Section: "model", Name: "attn_num_kv_heads", Kind: KNullInt, Default: nil, Check: atLeast(1)},
	{Section: "model", Name: "rope_theta", Kind: KFloat, Default: 10000.0, Check: positive},
	{Section: "model", Name: "tie_embeddings", Kind: KBool, Default: false},
	{Section: "model", Name: "initializer_range", Kind: KFloat, Default: 0.02, Check: positive},
	{Section: "model", Name: "rescale_residual", Kind: KBool, Default: true},

	// train: mdn.train.config.TrainSection
	{Section: "train", Name: "steps", Kind: KInt, Default: int64(1000), Check: atLeast(1), Help: "optimizer steps"},
	{Section: "train", Name: "batch_size", Kind: KInt, Default: int64(8), Check: atLeast(1), Help: "sequences per micro-batch per process"},
	{Section: "train", Name: "seq_len", Kind: KInt, Default: int64(2048), Check: atLeast(1)},
	{Section: "train", Name: "grad_accum", Kind: KInt, Default: int64(1), Check: atLeast(1)},
	{Section: "train", Name: "seed", Kind: KInt, Default: int64(42)},
	{Section: "train", Name: "precision", Kind: KString, Default: "auto", Check: oneOf("auto", "bf16", "fp32")},
	{Section: "train", Name: "compile", Kind: KBool, Default: false},
	{Section: "train", Name: "checkpoint_activations", Kind: KBool, Default: false, Help: "recompute each block in the backward"},
	{Section: "train", Name: "device", Kind: KString, Default: "auto", Check: oneOf("auto", "cpu", "cuda")},
	{Section: "train", Name: "log_every", Kind: KInt, Default: int64(1), Check: atLeast(1)},
	{Section: "train", Name: "ckpt_every", Kind: KInt, Default: int64(0), Check: atLeast(0), Help: "0: only at the end and when stopped"},
	{Section: "train", Name: "save_checkpoints", Kind: KBool, Default: true, Help: "false: no checkpoints (throughput runs)"},
	{Section: "train", Name: "keep_checkpoints", Kind: KInt, Default: int64(2), Check: atLeast(1)},
	{Section: "train", Name: "max_skipped", Kind: KInt, Default: int64(10), Check: atLeast(0)},
	{Section: "train", Name: "peak_tflops", Kind: KFloat, Default: 0.0, Check: atLeast(0)},
	{Section: "train", Name: "stop_after", Kind: KInt, Default: int64(0), Check: atLeast(0)},
	{Section: "train", Name: "stop_grace_s", Kind: KFloat, Default: 120.0, Check: positive},

	// optim: mdn.train.config.OptimSection
	{Section: "optim", Name: "lr", Kind: KFloat, Default: 3e-4, Check: positive},
	{Section: "optim", Name: "betas", Kind: KFloatList, Default: []float64{0.9, 0.95}, Check: func(v any) string {
		b, _ := v.([]float64)
		if len(b) != 2 || b[0] < 0 || b[0] >= 1 || b[1] < 0 || b[1] >= 1 {
			return "two numbers in [0, 1)"
		}
		return ""
	}},
	{Section: "optim", Name: "eps", Kind: KFloat, Default: 1e-15, Check: positive},
	{Section: "optim", Name: "weight_decay", Kind: KFloat, Default: 0.1, Check: atLeast(0)},
	{Section: "optim", Name: "warmup_steps", Kind: KInt, Default: int64(1024), Check: atLeast(0)},
	{Section: "optim", Name: "min_lr_ratio", Kind: KFloat, Default: 0.1, Check: inRange(0, 1)},
	{Section: "optim", Name: "schedule", Kind: KString, Default: "cosine", Check: oneOf("cosine", "linear", "constant")},
	{Section: "optim", Name: "clip", Kind: KFloat, Default: 1.0, Check: atLeast(0)},

	// data: mdn.data.DataConfig
	{Section: "data", Name: "source", Kind: KString, Default: "bytes", Check: oneOf("bytes", "shards", "hf", "synthetic")},
	{Section: "data", Name: "path", Kind: KString, Default: ""},
	{Section: "data", Name: "dtype", Kind: KString, Default: "uint16", Check: oneOf("uint16", "uint32")},
	{Section: "data", Name: "corpus_bytes", Kind: KInt, Default: int64(2000000), Check: atLeast(1024)},
	{Section: "data", Name: "corpus_seed", Kind: KInt, Default: int64(1234)},
	{Section: "data", Name: "hf_dataset", Kind: KString, Default: ""},
	{Section: "data", Name: "hf_config", Kind: KString, Default: ""},
	{Section: "data", Name: "hf_split", Kind: KString, Default: "train"},
	{Section: "data", Name: "hf_text_field", Kind: KString, Default: "text"},
	{Section: "data", Name: "hf_tokenizer", Kind: KString, Default: "gpt2"},

	// parallel: mdn.train.config.ParallelSection (launch keys are Go's)
	{Section: "parallel", Name: "strategy", Kind: KString, Default: "auto", Check: oneOf("auto", "none", "ddp", "fsdp")},
	{Section: "parallel", Name: "fsdp_min_params", Kind: KInt, Default: int64(300000000), Check: atLeast(0)},
	{Section: "parallel", Name: "nproc_per_node", Kind: KProcs, Default: "auto", Help: "processes per node: auto = all visible GPUs, or 1 CPU process"},
	{Section: "parallel", Name: "nnodes", Kind: KInt, Default: int64(1), Check: atLeast(1)},
	{Section: "parallel", Name: "node_rank", Kind: KInt, Default: int64(0), Check: atLeast(0)},
	{Section: "parallel", Name: "rdzv_endpoint", Kind: KString, Default: "", Help: "host:port of the rendezvous (multi-node)"},
	{Section: "parallel", Name: "rdzv_id", Kind: KString, Default: ""},
	{Section: "parallel", Name: "rdzv_backend", Kind: KString, Default: "c10d", Check: oneOf("c10d", "static")},
	{Section: "parallel", Name: "master_port", Kind: KInt, Default: int64(0), Check: inRange(0, 65535)},
}

var schemaIndex = func() map[string]*Field {
	m := map[string]*Field{}
	for _, f := range Schema {
		m[f.Key()] = f
	}
	return m
}()

// Lookup finds a field by "section.name" or by a bare name that only one section has.
func Lookup(key string) (*Field, error) {
	if f, ok := schemaIndex[key]; ok {
		return f, nil
	}
	if strings.Contains(key, ".") {
		sec, name, _ := strings.Cut(key, ".")
		if !knownSection(sec) {
			return nil, fmt.Errorf("unknown section %q (sections: %s)", sec, strings.Join(Sections, ", "))
		}
		return nil, fmt.Errorf("unknown key %s%s", key, suggest(sec, name))
	}
	var hits []*Field
	for _, f := range Schema {
		if f.Name == key {
			hits = append(hits, f)
		}
	}
	switch len(hits) {
	case 1:
		return hits[0], nil
	case 0:
		return nil, fmt.Errorf("unknown key %q%s", key, suggest("", key))
	}
	var names []string
	for _, h := range hits {
		names = append(names, h.Key())
	}
	return nil, fmt.Errorf("key %q is ambiguous: write one of %s", key, strings.Join(names, ", "))
}

func knownSection(s string) bool {
	for _, x := range Sections {
		if x == s {
			return true
		}
	}
	return false
}

// suggest proposes the closest known key (edit distance <= 2) in section (any section when empty).
func suggest(section, name string) string {
	best, bestD := "", 3
	for _, f := range Schema {
		if section != "" && f.Section != section {
			continue
		}
		if d := editDistance(f.Name, name); d < bestD {
			best, bestD = f.Key(), d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev = cur
	}
	return prev[len(b)]
}

// sectionFields returns the fields of one section, in schema order.
func sectionFields(section string) []*Field {
	var out []*Field
	for _, f := range Schema {
		if f.Section == section {
			out = append(out, f)
		}
	}
	return out
}

// sortedKeys returns the keys of m in sorted order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
