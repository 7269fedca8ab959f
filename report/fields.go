package report

import (
	"regexp"
	"sort"
	"strings"
)

// DefaultAxes are the fields that describe what was run (as opposed to what was measured). When a table cell
// would hold rows of more than one variant, the axes that differ inside the cell are added to the table's rows.
var DefaultAxes = []string{
	"op", "task", "model", "constraint", "mode", "dtype", "chunk_size", "B", "T", "H", "HV", "K", "V",
	"BT", "BK", "BV", "num_warps", "num_stages", "seq_len", "L", "N", "num_pairs", "pairs", "vocab",
	"d_model", "width", "layers", "n_layers", "lr", "backend", "impl", "gpus", "world_size",
}

// deviceFields and versionFields identify the machine and the software a row was measured with.
// ("gpu" is not one: sweeps record the GPU index there, and two H100s of one host are one machine kind.)
var deviceFields = []string{"device", "device_name", "card"}

var versionRE = regexp.MustCompile(`^(versions?\.[^.]+|torch|triton|mdn|cuda|fla|torch_version|triton_version|mdn_version|cuda_version|fla_version)$`)

// notGrouping are version fields that do not change a measurement (the Go CLI's own build): they are shown in
// the metadata and a note says when they differ, but they do not split tables.
var notGrouping = regexp.MustCompile(`(^|\.)mdnctl$`)

// bookkeeping fields never offered as metrics or axes.
var bookkeeping = map[string]bool{
	FieldFile: true, FieldLine: true, FieldRun: true, "v": true, "t": true, "job": true, "event": true,
	"pid": true, "elapsed": true, "point": true, "variant": true, "status": true, "time": true,
	"timestamp": true, "started": true, "finished": true, "ended": true,
}

// GroupFields returns the device and version fields present in the rows, in a stable order: the rows of a
// table must agree on all of them.
func GroupFields(rows []Row) []string {
	present := map[string]bool{}
	for _, r := range rows {
		for k := range r {
			present[k] = true
		}
	}
	var out []string
	for _, d := range deviceFields {
		if present[d] {
			out = append(out, d)
		}
	}
	if present["device.name"] { // nested {"device": {"name": ...}}
		out = append(out, "device.name")
	}
	var vers []string
	for k := range present {
		if versionRE.MatchString(k) && !notGrouping.MatchString(k) {
			vers = append(vers, k)
		}
	}
	sort.Strings(vers)
	return append(out, vers...)
}

// betterDirection says whether a lower or a higher value of a metric is better ("" when unknown).
func betterDirection(metric string) string {
	m := strings.ToLower(metric)
	for _, s := range []string{"tokens_per_s", "tok_per_s", "tokens/s", "tps", "throughput", "tflops", "mfu", "acc", "speedup", "speed_up", "bandwidth", "gbps"} {
		if strings.Contains(m, s) {
			return "higher"
		}
	}
	for _, s := range []string{"ms", "time", "latency", "loss", "ppl", "perplexity", "mem", "bytes", "seconds", "_s", "err"} {
		if strings.HasSuffix(m, s) || strings.Contains(m, s+"_") || strings.HasPrefix(m, s) {
			return "lower"
		}
	}
	return ""
}

// unitOf guesses a metric's unit from its name, for axis labels and captions.
func unitOf(metric string) string {
	m := strings.ToLower(metric)
	switch {
	case strings.HasSuffix(m, "_ms") || strings.HasSuffix(m, ".ms") || m == "ms" || strings.Contains(m, "_ms_"):
		return "ms"
	case strings.Contains(m, "tokens_per_s") || strings.Contains(m, "tok_per_s") || m == "tps":
		return "tokens/s"
	case strings.Contains(m, "mem") && (strings.HasSuffix(m, "bytes") || strings.HasSuffix(m, "_b")):
		return "bytes"
	case strings.HasSuffix(m, "_gib") || strings.HasSuffix(m, "_gb"):
		return "GiB"
	case strings.HasSuffix(m, "_mib") || strings.HasSuffix(m, "_mb"):
		return "MiB"
	case strings.Contains(m, "mfu"):
		return "%"
	case strings.Contains(m, "tflops"):
		return "TFLOP/s"
	case strings.HasSuffix(m, "_s") || strings.HasSuffix(m, "seconds"):
		return "s"
	case strings.Contains(m, "loss"):
		return "nats/token"
	case strings.Contains(m, "acc"):
		return "fraction"
	}
	return ""
}

// axisLabel is a human label with unit for a field used on a plot axis.
func axisLabel(key string) string {
	switch strings.ToLower(key) {
	case "t", "seq_len", "l":
		return "sequence length " + key + " (tokens)"
	case "chunk_size":
		return "chunk size (tokens)"
	case "d_model", "width":
		return "model width " + key
	case "tokens", "tokens_seen", "consumed_tokens", "total_tokens":
		return "training tokens"
	case "step":
		return "optimizer step"
	case "alpha":
		return "α (state decay)"
	case "beta":
		return "β (step size)"
	case "eta":
		return "η (gradient gain)"
	case "mu":
		return "μ (momentum decay)"
	}
	if u := unitOf(key); u != "" {
		return key + " (" + u + ")"
	}
	return key
}

// NumericFields lists the fields holding numbers in at least one row, minus bookkeeping and the given axes.
func NumericFields(rows []Row, exclude ...string) []string {
	ex := map[string]bool{}
	for _, e := range exclude {
		ex[e] = true
	}
	seen := map[string]bool{}
	for _, r := range rows {
		for k, v := range r {
			if _, ok := v.(float64); !ok || bookkeeping[k] || ex[k] || seen[k] || strings.HasPrefix(k, "params.") || strings.HasPrefix(k, "launch.") {
				continue
			}
			seen[k] = true
		}
	}
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// AllFields lists every field name in the rows (bookkeeping included), sorted.
func AllFields(rows []Row) []string {
	seen := map[string]bool{}
	for _, r := range rows {
		for k := range r {
			seen[k] = true
		}
	}
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// fieldIndex answers "does any row have this field?" for many fields after one pass over the rows.
func fieldIndex(rows []Row) func(string) bool {
	all := map[string]bool{}
	for _, r := range rows {
		for k := range r {
			all[k] = true
		}
	}
	return func(key string) bool {
		if all[key] {
			return true
		}
		for k := range all {
			if strings.HasSuffix(k, "."+key) {
				return true
			}
		}
		return false
	}
}

// hasField reports whether any row has the field (by exact name or unique suffix).
func hasField(rows []Row, key string) bool {
	for _, r := range rows {
		if _, ok := r.Get(key); ok {
			return true
		}
	}
	return false
}

// distinct lists a field's values across rows (sorted; "" for rows without it, when any).
func distinct(rows []Row, key string) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range rows {
		s, _ := r.Str(key)
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	sortValues(out)
	return out
}

func firstPresent(rows []Row, candidates ...string) string {
	for _, c := range candidates {
		if hasField(rows, c) {
			return c
		}
	}
	return ""
}
