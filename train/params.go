package train

import "fmt"

// Counts are parameter counts of a model config (the same numbers as mdn.models.count_parameters; a test
// compares them with Python for every shipped config).
type Counts struct {
	Total        int64 `json:"total"`
	Embedding    int64 `json:"embedding"` // input embedding + untied LM head
	NonEmbedding int64 `json:"non_embedding"`
}

// ParamCount computes the parameter count of the resolved model section analytically, without Python.
func (c *Config) ParamCount() (Counts, error) {
	m := c.Values["model"]
	i := func(k string) int64 { v, _ := m[k].(int64); return v }
	b := func(k string) bool { v, _ := m[k].(bool); return v }
	d, V, L := i("hidden_size"), i("vocab_size"), i("num_layers")
	arch, _ := m["arch"].(string)
	emb := V * d
	if !b("tie_embeddings") {
		emb += V * d
	}
	useMLP := arch != "mamba2"
	if u, ok := m["use_mlp"].(bool); ok {
		useMLP = u
	}
	ffn := i("intermediate_size")
	if m["intermediate_size"] == nil {
		ffn = (d*8/3 + 255) / 256 * 256
	}
	attn := map[int64]bool{}
	for _, l := range m["attn_layers"].([]int64) {
		attn[l] = true
	}
	var body int64
	for l := int64(0); l < L; l++ {
		body += d // mixer norm
		if useMLP {
			body += d + 3*d*ffn
		}
		var mix int64
		var err error
		if arch == "transformer" || attn[l] {
			mix = attentionParams(d, i("attn_num_heads"), i("attn_num_kv_heads"))
		} else {
			mix, err = mixerParams(arch, m, d)
		}
		if err != nil {
			return Counts{}, err
		}
		body += mix
	}
	body += d // final norm
	return Counts{Total: body + emb, Embedding: emb, NonEmbedding: body}, nil
}

func attentionParams(d, heads, kvHeads int64) int64 {
	if kvHeads == 0 {
		kvHeads = heads
	}
	hd := d / heads
	return d*heads*hd + 2*d*kvHeads*hd + heads*hd*d
}

func mixerParams(arch string, m map[string]any, d int64) (int64, error) {
	i := func(k string) int64 { v, _ := m[k].(int64); return v }
	b := func(k string) bool { v, _ := m[k].(bool); return v }
	H, dk, conv := i("num_heads"), i("head_dim"), i("conv_size")
	dv := int64(float64(dk) * m["expand_v"].(float64))
	K, Vd := H*dk, H*dv
	convs := int64(0)
	if b("use_short_conv") {
		convs = (2*K + Vd) * conv
	}
	gate := int64(0)
	if b("use_output_gate") {
		gate = d * Vd
	}
	switch arch {
	case "mdn":
		n := 2*d*K + d*Vd + 4*d*H + convs + 4*H + gate + dv + Vd*d
		if m["gate_mode"] == "trig" {
			n += H // log_factor
		}
		if b("use_output_correction") {
			n += H // D_log
		}
		return n, nil
	case "gdn":
		return 2*d*K + d*Vd + 2*d*H + convs + 2*H + gate + dv + Vd*d, nil
	case "kda": // fla's KimiDeltaAttention: low-rank (head_v_dim) f and g projections, per-channel dt_bias
		return 2*d*K + d*Vd + convs + (d*dv + dv*K) + d*H + (d*dv + dv*Vd + Vd) + H + K + dv + Vd*d, nil
	case "mamba2": // fla's Mamba2: in_proj (z, x, B, C, dt), conv with bias, dt_bias/A_log/D, gated norm
		inner := i("mamba_expand") * d
		hd, N, G := i("head_dim"), i("state_size"), i("n_groups")
		heads := inner / hd
		convDim := inner + 2*G*N
		return d*(2*inner+2*G*N+heads) + convDim*conv + convDim + 3*heads + inner + inner*d, nil
	}
	return 0, fmt.Errorf("model.arch = %q: no parameter count", arch)
}
