package sweep

import (
	"os"
)

// Slot is one place that runs points with its own warm worker: a GPU, or the CPU.
type Slot struct {
	Name   string   // "gpu0", "cpu"
	GPU    string   // the CUDA_VISIBLE_DEVICES entry; "" for the CPU
	Device string   // "cuda" or "cpu" (the job's device)
	Env    []string // extra environment of the worker
}

// GPUSlot is the slot of one GPU: the child sees only that GPU.
func GPUSlot(id string) Slot {
	return Slot{Name: "gpu" + id, GPU: id, Device: "cuda", Env: []string{"CUDA_VISIBLE_DEVICES=" + id}}
}

// CPUSlot runs on the CPU: no GPU visible, Triton kernels in the interpreter.
func CPUSlot() Slot {
	return Slot{Name: "cpu", Device: "cpu", Env: []string{"CUDA_VISIBLE_DEVICES=", "TRITON_INTERPRET=1"}}
}

// JobParams are the resolved parameters of one point's job: every field flat (op, chunk_size, BK, ..., B, T,
// H, K, V, mode, dtype), the derived extras under "derived", the [bench] parameters, the correctness-gate
// shape, and where it runs. Python reads these and guesses nothing.
//
// A generic task (not bench/verify) gets its [<task>] table, then the point's values (axes and derived values,
// flat), then seed, device, task, point and variant.
func JobParams(f *File, p Point, slot Slot) map[string]any {
	if f.Generic {
		params := map[string]any{}
		for k, v := range f.TaskParams {
			params[k] = v
		}
		for k, v := range p.Values {
			params[k] = v
		}
		params["seed"] = f.Seed
		params["device"] = slot.Device
		params["task"] = f.Job
		params["point"] = p.ID
		params["variant"] = p.Variant
		return params
	}
	params := map[string]any{}
	for _, fd := range Fields {
		params[fd.Name] = p.Values[fd.Name]
	}
	params[RepeatField] = p.Values[RepeatField]
	if len(p.Extras) > 0 {
		d := map[string]any{}
		for _, e := range p.Extras {
			d[e] = p.Values[e]
		}
		params["derived"] = d
	}
	b := f.Bench
	params["warmup_ms"] = b.WarmupMS
	params["rep_ms"] = b.RepMS
	params["check"] = b.Check
	params["tolerance"] = b.Tolerance
	params["allow_naive_fallback"] = b.AllowNaiveFallback
	official := b.OfficialPath
	if official == "" {
		official = os.Getenv("MDN_OFFICIAL_PATH")
	}
	params["official_path"] = official
	params["check_shape"] = map[string]any{
		"B": int64(1),
		"T": min64(p.Values["T"].(int64), b.CheckT),
		"H": min64(p.Values["H"].(int64), b.CheckH),
		"K": p.Values["K"], "V": p.Values["V"],
	}
	if p.CheckMode != "" {
		params["check_mode"] = p.CheckMode
	}
	params["seed"] = f.Seed
	params["device"] = slot.Device
	if slot.Device == "cuda" {
		params["timer"] = "do_bench"
	} else {
		params["timer"] = "wall_clock"
	}
	params["point"] = p.ID
	params["variant"] = p.Variant
	return params
}

// ProbeParams ask the job for its environment (device, versions) and import times, without running a point.
func ProbeParams(slot Slot) map[string]any {
	return map[string]any{"probe": true, "device": slot.Device}
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}
