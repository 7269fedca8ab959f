package train

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func tiny(t *testing.T, sets ...string) *Config {
	return mustLoad(t, filepath.Join(configsDir, "mdn-tiny.toml"), sets...)
}

func TestLaunchPlans(t *testing.T) {
	cases := []struct {
		name     string
		sets     []string
		gpus     int
		torchrun bool
		device   string
		want     []string // substrings of the command, in order
		env      bool
	}{
		{"cpu", nil, 0, false, "cpu", []string{"py -m mdn.runner"}, false},
		{"one gpu", nil, 1, true, "cuda", []string{"-m torch.distributed.run --standalone --nproc-per-node=1 --no-python bash -c"}, true},
		{"all gpus", nil, 8, true, "cuda", []string{"--standalone --nproc-per-node=8"}, true},
		{"some gpus", []string{"nproc_per_node=2"}, 8, true, "cuda", []string{"--nproc-per-node=2"}, true},
		{"cpu ranks", []string{"nproc_per_node=2", "device=cpu"}, 8, true, "cpu", []string{"--standalone --nproc-per-node=2"}, false},
		{"gpu, none visible", []string{"device=cuda"}, 0, true, "cuda", []string{"--nproc-per-node=gpu"}, true},
		{"multi-node c10d", []string{"nnodes=2", "rdzv_endpoint=node0:29500", "rdzv_id=job7"}, 4, true, "cuda",
			[]string{"--nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=node0:29500 --rdzv-id=job7 --nproc-per-node=4"}, true},
		{"multi-node static", []string{"nnodes=2", "node_rank=1", "rdzv_endpoint=node0:29500", "rdzv_backend=static"}, 4, true, "cuda",
			[]string{"--nnodes=2 --node-rank=1 --master-addr=node0 --master-port=29500 --nproc-per-node=4"}, true},
		{"fixed port", []string{"master_port=29400"}, 2, true, "cuda", []string{"--nnodes=1 --master-addr=127.0.0.1 --master-port=29400 --nproc-per-node=2"}, true},
	}
	for _, tc := range cases {
		c := tiny(t, tc.sets...)
		l, err := c.PlanLaunch("py", tc.gpus, "/run/job.json")
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		cmd := l.Command()
		if l.Torchrun != tc.torchrun || l.Device != tc.device {
			t.Errorf("%s: torchrun %v device %s; want %v %s", tc.name, l.Torchrun, l.Device, tc.torchrun, tc.device)
		}
		for _, w := range tc.want {
			if !strings.Contains(cmd, w) {
				t.Errorf("%s: command\n  %s\nlacks %q", tc.name, cmd, w)
			}
		}
		if l.Torchrun && !strings.HasSuffix(cmd, " py /run/job.json") {
			t.Errorf("%s: workers must get the interpreter and the spec file: %s", tc.name, cmd)
		}
		if got := len(l.Env) > 0; got != tc.env {
			t.Errorf("%s: env %v", tc.name, l.Env)
		}
	}
	if _, err := tiny(t, "nproc_per_node=4").PlanLaunch("py", 2, "/j"); err == nil || !strings.Contains(err.Error(), "only 2 GPU(s)") {
		t.Errorf("too many processes: %v", err)
	}
	if _, err := tiny(t, "nnodes=2", "rdzv_endpoint=node0", "rdzv_backend=static").PlanLaunch("py", 2, "/j"); err == nil ||
		!strings.Contains(err.Error(), "host:port") {
		t.Errorf("static without port: %v", err)
	}
}

// The worker script really gives rank 0 the events and silences the others (run with bash, no torchrun).
func TestWorkerScript(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	dir := t.TempDir()
	fake := filepath.Join(dir, "py")
	// the "interpreter": prints its arguments and what it reads on stdin
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"args=$*\"; cat\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join(dir, "job.json")
	if err := os.WriteFile(spec, []byte(`{"v":1}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for rank, want := range map[string]string{"0": "args=-m mdn.runner\n{\"v\":1}\n", "1": ""} {
		cmd := exec.Command(bash, "-c", workerScript, fake, spec)
		cmd.Env = append(os.Environ(), "RANK="+rank)
		out, err := cmd.Output()
		if err != nil || string(out) != want {
			t.Errorf("rank %s: %q, %v; want %q", rank, out, err, want)
		}
	}
}

func TestVisibleGPUs(t *testing.T) {
	for v, want := range map[string]int{"": 0, "0": 1, "0,1,2": 3, "-1": 0, "GPU-a,GPU-b": 2} {
		t.Setenv("CUDA_VISIBLE_DEVICES", v)
		if got := VisibleGPUs(); got != want {
			t.Errorf("CUDA_VISIBLE_DEVICES=%q: %d, want %d", v, got, want)
		}
	}
}

func TestShellQuote(t *testing.T) {
	got := []string{shellQuote("a-b/c.d"), shellQuote("it's"), shellQuote("")}
	if want := []string{"a-b/c.d", `'it'\''s'`, "''"}; !reflect.DeepEqual(got, want) {
		t.Errorf("%q", got)
	}
}
