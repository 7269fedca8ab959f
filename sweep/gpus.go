package sweep

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

var gpuLineRe = regexp.MustCompile(`^GPU (\d+):`)

// ParseGPUList parses `nvidia-smi -L` output into GPU indices.
func ParseGPUList(out string) []string {
	var ids []string
	for _, line := range strings.Split(out, "\n") {
		if m := gpuLineRe.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			ids = append(ids, m[1])
		}
	}
	return ids
}

// DetectGPUs lists the GPUs this process may use: the entries of CUDA_VISIBLE_DEVICES when it is set (as under
// Slurm), else the GPUs `nvidia-smi -L` lists; none when neither gives any.
func DetectGPUs(ctx context.Context) []string {
	if v, ok := os.LookupEnv("CUDA_VISIBLE_DEVICES"); ok {
		var ids []string
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if s == "" || s == "-1" {
				continue
			}
			ids = append(ids, s)
		}
		return ids
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nvidia-smi", "-L").Output()
	if err != nil {
		return nil
	}
	return ParseGPUList(string(out))
}

// Slots turns a --gpus value into slots: "all" (every detected GPU, or the CPU when there is none), "cpu", or a
// comma-separated list of GPU ids.
func Slots(spec string, detected []string) ([]Slot, error) {
	spec = strings.TrimSpace(spec)
	switch strings.ToLower(spec) {
	case "", "all":
		if len(detected) == 0 {
			return []Slot{CPUSlot()}, nil
		}
		var s []Slot
		for _, id := range detected {
			s = append(s, GPUSlot(id))
		}
		return s, nil
	case "cpu", "none":
		return []Slot{CPUSlot()}, nil
	}
	var s []Slot
	seen := map[string]bool{}
	for _, part := range strings.Split(spec, ",") {
		id := strings.TrimSpace(part)
		if id == "" {
			continue
		}
		if seen[id] {
			return nil, fmt.Errorf("--gpus %q: GPU %s listed twice", spec, id)
		}
		seen[id] = true
		if len(detected) > 0 {
			found := false
			for _, d := range detected {
				if d == id {
					found = true
				}
			}
			if !found {
				return nil, fmt.Errorf("--gpus %q: GPU %s not found (have %s)", spec, id, strings.Join(detected, ","))
			}
		}
		s = append(s, GPUSlot(id))
	}
	if len(s) == 0 {
		return nil, fmt.Errorf("--gpus %q: expected all, cpu, or GPU ids such as 0,1", spec)
	}
	return s, nil
}
