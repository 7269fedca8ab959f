package slurm_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/mdnctl/mdnctl/slurm"
)

func TestParseConfigTOML(t *testing.T) {
	src := `name = "chunk_sizes"   # other tables belong to the sweep file

[axes]
chunk_size = [32, 64]

[slurm]
partition = "gpu"
account = "proj42"
time = "1-02:00:00"
gpus = 1
cpus_per_task = 8
mem = "64G"
concurrency = 4
shards = 16
point_timeout = "10m"
extra = ["--exclusive", "#SBATCH --mail-type=END"]
setup = ["module load cuda/12.4"]
`
	c, err := slurm.ParseConfigTOML("sweeps/x.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	w := slurm.Config{Partition: "gpu", Account: "proj42", Time: "1-02:00:00", GPUs: 1, CPUsPerTask: 8, Mem: "64G",
		Concurrency: 4, Shards: 16, PointTimeout: "10m", Extra: []string{"--exclusive", "#SBATCH --mail-type=END"},
		Setup: []string{"module load cuda/12.4"}}
	if !reflect.DeepEqual(c, w) {
		t.Errorf("got %+v\nwant %+v", c, w)
	}
	if c, err := slurm.ParseConfigTOML("a.toml", []byte("x = 1\n")); err != nil || !reflect.DeepEqual(c, slurm.Config{}) {
		t.Errorf("no [slurm] table: %+v %v", c, err)
	}
}

func TestParseConfigTOMLErrors(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"[slurm]\npartition = \"gpu\"\nconcurrenc = 2\n", `f.toml:3: slurm.concurrenc`},
		{"[slurm]\ngpus = \"two\"\n", "f.toml:2: slurm.gpus: incompatible types"},
		{"[slurm]\n\ntime = \"2h\"\n", `f.toml:3: slurm.time = "2h": expected a Slurm time limit`},
		{"[slurm]\nconcurrency = -1\n", "f.toml:2: slurm.concurrency = -1: expected 0 (default) or a positive integer"},
		{"[slurm]\nshards = 5000\n", "at most 1000 array tasks"},
		{"[slurm]\npartition = \"gpu a\"\n", "f.toml:2: slurm.partition"},
		{"[slurm]\nextra = [\"--array=0-3\"]\n", "--array is set by mdnctl"},
		{"[slurm]\nextra = [\"exclusive\"]\n", `slurm.extra[0] = "exclusive": expected one sbatch option`},
		{"[slurm]\nrendezvous = \"tcp\"\n", `slurm.rendezvous = "tcp"`},
		{"[slurm]\npoint_timeout = \"ten\"\n", "slurm.point_timeout"},
		{"[slurm]\npython = \"python3\"\n", "expected an absolute path"},
		{"[slurm]\nmem = \"lots\"\n", "slurm.mem"},
		{"[slurm]\nport = 80\n", "slurm.port = 80"},
		{"[slurm\n", "f.toml:2"},
	} {
		_, err := slurm.ParseConfigTOML("f.toml", []byte(c.src))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want an error containing %q", c.src, err, c.want)
		}
	}
}
