package train

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const configsDir = "../configs"

func writeTOML(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "run.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustLoad(t *testing.T, path string, sets ...string) *Config {
	t.Helper()
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sets {
		if err := c.Set(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Finish(); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestShippedConfigsResolve(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(configsDir, "*.toml"))
	if len(files) < 15 {
		t.Fatalf("expected the shipped configs, found %d", len(files))
	}
	for _, f := range files {
		c := mustLoad(t, f)
		if want := strings.TrimSuffix(filepath.Base(f), ".toml"); c.Name != want {
			t.Errorf("%s: name %q, want the file name %q", f, c.Name, want)
		}
	}
}

func TestFindConfig(t *testing.T) {
	for arg, want := range map[string]string{"1.3b": "mdn-1.3b.toml", "tiny": "mdn-tiny.toml",
		"gdn-1.3b": "gdn-1.3b.toml", "transformer-400m": "transformer-400m.toml", "hybrid-3to1-400m": "mdn-hybrid-3to1-400m.toml"} {
		p, err := FindConfig(arg, configsDir)
		if err != nil || filepath.Base(p) != want {
			t.Errorf("FindConfig(%q) = %q, %v; want %s", arg, p, err, want)
		}
	}
	p, err := FindConfig(filepath.Join(configsDir, "gdn-tiny.toml"), configsDir)
	if err != nil || filepath.Base(p) != "gdn-tiny.toml" {
		t.Errorf("path: %q %v", p, err)
	}
	_, err = FindConfig("2b", configsDir)
	if err == nil || !strings.Contains(err.Error(), `unknown config "2b"`) || !strings.Contains(err.Error(), "1.3b") {
		t.Errorf("unknown name: %v", err)
	}
	if _, err := FindConfig("nope/x.toml", configsDir); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("missing file: %v", err)
	}
}

func TestErrorsCarryFileAndLine(t *testing.T) {
	cases := []struct{ body, want string }{
		{"name = \"x\"\n\n[train]\nsteps = 0\n", ":4: train.steps = 0: expected >= 1"},
		{"[train]\nseq_len = 64\nstepz = 3\n", ":3: unknown key train.stepz (did you mean train.steps?)"},
		{"[model]\n\narch = \"rwkv\"\n", `:3: model.arch = "rwkv": expected one of mdn, gdn, kda, mamba2, transformer`},
		{"[optim]\nbetas = [0.9]\n", ":2: optim.betas = [0.9]: expected two numbers in [0, 1)"},
		{"[training]\nsteps = 1\n", `:1: unknown section "training"`},
		{"[train]\nsteps = \"ten\"\n", `:2: train.steps = "ten": expected an integer`},
		{"[train]\nsteps = 3\nsteps = 4\n", ":3:"}, // TOML parse error (duplicate key) with its line
		{"[model]\nnum_layers = 4\nattn_layers = [1, 4]\n", `:3: model.attn_layers = [1, 4]: expected distinct layer indices in [0, 4)`},
		{"[data]\nsource = \"shards\"\n", `:2: data.source = "shards" needs data.path`},
		{"[parallel]\nnnodes = 2\n", ":2: parallel.nnodes = 2 needs parallel.rdzv_endpoint"},
		{"[model]\narch = \"gdn\"\nmixer_impl = \"chunk\"\n", `:3: model.mixer_impl = "chunk": expected one of auto, fla, reference, fla_layer for arch gdn`},
	}
	for _, tc := range cases {
		p := writeTOML(t, tc.body)
		c, err := Load(p)
		if err == nil {
			err = c.Finish()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), p+":") {
			t.Errorf("%q:\n got %v\nwant %s%s", tc.body, err, p, tc.want)
		}
	}
}

func TestSetOverrides(t *testing.T) {
	p := filepath.Join(configsDir, "mdn-tiny.toml")
	c := mustLoad(t, p, "steps=30", "optim.lr=1e-3", "data.source=synthetic", "min_log_mu=none",
		"attn_layers=[1]", "nproc_per_node=2", "expand_v=1")
	if c.Int("train.steps") != 30 || c.Float("optim.lr") != 1e-3 || c.Str("data.source") != "synthetic" {
		t.Errorf("values: %v %v %v", c.Int("train.steps"), c.Float("optim.lr"), c.Str("data.source"))
	}
	if c.Values["model"]["min_log_mu"] != nil || c.Float("model.expand_v") != 1.0 {
		t.Errorf("min_log_mu %v expand_v %v", c.Values["model"]["min_log_mu"], c.Values["model"]["expand_v"])
	}
	if !reflect.DeepEqual(c.Values["model"]["attn_layers"], []int64{1}) || c.Values["parallel"]["nproc_per_node"] != int64(2) {
		t.Errorf("attn_layers %v nproc %v", c.Values["model"]["attn_layers"], c.Values["parallel"]["nproc_per_node"])
	}
	for set, want := range map[string]string{
		"steps=abc":        `--set steps=abc: train.steps = "abc": expected an integer`,
		"stepz=3":          `--set stepz=3: unknown key "stepz" (did you mean train.steps?)`,
		"train.lr=1":       "--set train.lr=1: unknown key train.lr",
		"gate_mode=tanh":   `--set gate_mode=tanh: model.gate_mode = "tanh": expected one of trig, clamp, none, quadrant`,
		"steps":            "--set steps: expected key=value",
		"nproc_per_node=0": `--set nproc_per_node=0: parallel.nproc_per_node = 0: expected "auto" or an integer >= 1`,
		"compile=yes":      `--set compile=yes: train.compile = "yes": expected true or false`,
		"min_log_mu=0.5":   `model.min_log_mu = 0.5: expected <= 0`,
		"foo.steps=1":      `unknown section "foo"`,
	} {
		c, _ := Load(p)
		err := c.Set(set)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--set %s: got %v, want %q", set, err, want)
		}
	}
}

func TestBareNamesAreUniqueOrAmbiguous(t *testing.T) {
	count := map[string]int{}
	for _, f := range Schema {
		count[f.Name]++
	}
	for name, n := range count {
		_, err := Lookup(name)
		if n == 1 && err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if n > 1 && (err == nil || !strings.Contains(err.Error(), "ambiguous")) {
			t.Errorf("%s is in %d sections but Lookup says %v", name, n, err)
		}
	}
}

func TestResolvedTOMLRoundTrips(t *testing.T) {
	c := mustLoad(t, filepath.Join(configsDir, "mdn-hybrid-3to1-400m.toml"), "steps=7", "min_log_mu=none", "betas=[0.8, 0.9]")
	var buf bytes.Buffer
	if err := c.WriteTOML(&buf); err != nil {
		t.Fatal(err)
	}
	p := writeTOML(t, buf.String())
	d := mustLoad(t, p)
	if !reflect.DeepEqual(c.Values, d.Values) || c.Name != d.Name {
		t.Errorf("round trip changed the config:\n%s", buf.String())
	}
	params := d.Params("/tmp/x", true)
	if params["resume"] != true || params["out_dir"] != "/tmp/x" || params["model"].(map[string]any)["min_log_mu"] != nil {
		t.Errorf("params: %v", params)
	}
}
