package train

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// spec §6.2, total parameters in millions (vocab 50257, untied embeddings).
var specParamsM = map[string]float64{
	"mdn-400m": 417.5, "mdn-1.3b": 1462.6, "gdn-400m": 417.3, "gdn-1.3b": 1462.1,
	"transformer-400m": 411.3, "transformer-1.3b": 1439.1, "kda-400m": 424.4, "kda-1.3b": 1465.7,
	"mamba2-400m": 419.8, "mamba2-1.3b": 1446.6, "mdn-hybrid-3to1-400m": 430.9, "mdn-hybrid-7to1-400m": 434.2,
	"gdn-hybrid-3to1-400m": 430.7,
}

func TestParamCountsMatchSpec(t *testing.T) {
	for name, want := range specParamsM {
		c := mustLoad(t, filepath.Join(configsDir, name+".toml"))
		n, err := c.ParamCount()
		if err != nil {
			t.Fatal(err)
		}
		if got := float64(n.Total) / 1e6; math.Abs(got-want)/want > 0.01 {
			t.Errorf("%s: %.1fM, spec %.1fM", name, got, want)
		}
		if n.Total != n.Embedding+n.NonEmbedding {
			t.Errorf("%s: parts do not add up: %+v", name, n)
		}
	}
	// the non-embedding counts of spec §6.2 and the per-layer split of the MDN layers
	c := mustLoad(t, filepath.Join(configsDir, "mdn-400m.toml"))
	if n, _ := c.ParamCount(); math.Round(float64(n.NonEmbedding)/1e5)/10 != 314.6 {
		t.Errorf("mdn-400m non-embedding %d, spec 314.6M", n.NonEmbedding)
	}
}

// python returns the repository's interpreter, or skips.
func python(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("short")
	}
	py := os.Getenv("MDN_PYTHON")
	if py == "" {
		py = filepath.Join("..", ".venv", "bin", "python")
	}
	if _, err := os.Stat(py); err != nil {
		t.Skipf("no Python at %s (make setup)", py)
	}
	if err := exec.Command(py, "-c", "import mdn.models, torch").Run(); err != nil {
		t.Skipf("%s cannot import mdn.models: %v", py, err)
	}
	return py
}

// The Go count is analytic; Python builds the model on the meta device. They must agree exactly, for every
// shipped config Python can build here (kda and mamba2 need fla).
func TestParamCountsEqualPython(t *testing.T) {
	py := python(t)
	files, _ := filepath.Glob(filepath.Join(configsDir, "*.toml"))
	models := map[string]map[string]any{}
	want := map[string]Counts{}
	for _, f := range files {
		c := mustLoad(t, f)
		models[c.Name] = c.Params("", false)["model"].(map[string]any)
		want[c.Name], _ = c.ParamCount()
	}
	models["mdn-variant"] = mustLoad(t, filepath.Join(configsDir, "mdn-tiny.toml"), "gate_mode=quadrant",
		"use_output_correction=false", "tie_embeddings=true", "use_output_gate=false", "intermediate_size=100",
		"attn_layers=[0]", "attn_num_kv_heads=1").Params("", false)["model"].(map[string]any)
	c := mustLoad(t, filepath.Join(configsDir, "mdn-tiny.toml"), "gate_mode=quadrant",
		"use_output_correction=false", "tie_embeddings=true", "use_output_gate=false", "intermediate_size=100",
		"attn_layers=[0]", "attn_num_kv_heads=1")
	want["mdn-variant"], _ = c.ParamCount()
	in, _ := json.Marshal(models)
	script := `
import json, sys
from mdn.models import count_parameters_for
from mdn.layers.availability import MixerUnavailable
out = {}
for name, m in json.load(sys.stdin).items():
    try:
        out[name] = count_parameters_for(m)
    except MixerUnavailable:
        pass
print(json.dumps(out))`
	cmd := exec.Command(py, "-c", script)
	cmd.Stdin = strings.NewReader(string(in))
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v", err)
	}
	var got map[string]Counts
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if len(got) < 12 {
		t.Fatalf("python counted only %d configs", len(got))
	}
	for name, g := range got {
		if g != want[name] {
			t.Errorf("%s: python %+v, go %+v", name, g, want[name])
		}
	}
}

// The schema's keys and defaults are Python's (ModelConfig, TrainSection, OptimSection, ParallelSection,
// DataConfig): a key added on one side only would be rejected or silently defaulted on the other.
func TestSchemaMatchesPython(t *testing.T) {
	py := python(t)
	script := `
import dataclasses, json
from mdn.models.config import ModelConfig
from mdn.train.config import TrainSection, OptimSection, ParallelSection
from mdn.data.sources import DataConfig
out = {}
for sec, cls in (("model", ModelConfig), ("train", TrainSection), ("optim", OptimSection), ("data", DataConfig),
                 ("parallel", ParallelSection)):
    out[sec] = {k: v for k, v in dataclasses.asdict(cls()).items()}
print(json.dumps(out))`
	b, err := exec.Command(py, "-c", script).Output()
	if err != nil {
		t.Fatalf("python: %v", err)
	}
	var pyDefaults map[string]map[string]any
	if err := json.Unmarshal(b, &pyDefaults); err != nil {
		t.Fatal(err)
	}
	for _, sec := range Sections {
		goKeys := map[string]bool{}
		for _, f := range sectionFields(sec) {
			goKeys[f.Name] = true
			pv, ok := pyDefaults[sec][f.Name]
			if !ok {
				t.Errorf("%s: Go has it, Python does not", f.Key())
				continue
			}
			gv, _ := json.Marshal(f.Default)
			var norm any
			_ = json.Unmarshal(gv, &norm)
			if !reflect.DeepEqual(norm, pv) {
				t.Errorf("%s: default Go %v, Python %v", f.Key(), norm, pv)
			}
		}
		for k := range pyDefaults[sec] {
			if !goKeys[k] {
				t.Errorf("%s.%s: Python has it, Go does not", sec, k)
			}
		}
	}
}
