package train

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// VisibleGPUs counts the NVIDIA GPUs this process may use: the entries of CUDA_VISIBLE_DEVICES when it is set,
// else the devices under /proc/driver/nvidia/gpus. No driver, no GPUs.
func VisibleGPUs() int {
	if v, ok := os.LookupEnv("CUDA_VISIBLE_DEVICES"); ok {
		v = strings.TrimSpace(v)
		if v == "" || strings.HasPrefix(v, "-1") || v == "NoDevFiles" {
			return 0
		}
		return len(strings.Split(v, ","))
	}
	entries, err := os.ReadDir("/proc/driver/nvidia/gpus")
	if err != nil {
		return 0
	}
	return len(entries)
}

// workerScript runs one torchrun worker: the runner reads the job spec from a file (every worker would share
// torchrun's stdin otherwise), and only rank 0 keeps its event stream (fd 1); the others' events go to
// /dev/null. Their stderr stays (tracebacks of any rank reach the log).
const workerScript = `[ "${RANK:-0}" = 0 ] || exec >/dev/null; exec "$0" -m mdn.runner < "$1"`

// Launch is how a run starts: the interpreter and its arguments (as launcher.Options Python/Args) and the
// extra environment.
type Launch struct {
	Torchrun bool     // false: one `python -m mdn.runner` process (the spec on stdin)
	Device   string   // cpu | cuda
	Procs    int      // processes per node (0 with torchrun's "gpu": all GPUs of the node, counted at start)
	Nodes    int      // nodes
	Python   string   // interpreter
	Args     []string // after the interpreter
	Env      []string // KEY=VALUE
	Note     string   // a remark for --dry-run (e.g. no GPU visible here)
}

// Command is the full command line, shell-quoted.
func (l *Launch) Command() string {
	parts := append([]string{l.Python}, l.Args...)
	q := make([]string, len(parts))
	for i, p := range parts {
		q[i] = shellQuote(p)
	}
	s := strings.Join(q, " ")
	if len(l.Env) > 0 {
		s = strings.Join(l.Env, " ") + " " + s
	}
	return s
}

// PlanLaunch decides the launch for a resolved config. gpus is the number of visible GPUs; specFile is where
// the job spec line is written (torchrun workers read it from there).
func (c *Config) PlanLaunch(python string, gpus int, specFile string) (*Launch, error) {
	l := &Launch{Python: python, Nodes: int(c.Int("parallel.nnodes"))}
	device := c.Str("train.device")
	if device == "auto" {
		device = "cpu"
		if gpus > 0 {
			device = "cuda"
		}
	}
	l.Device = device
	procs := 0
	switch p := c.Values["parallel"]["nproc_per_node"].(type) {
	case int64:
		procs = int(p)
	default: // "auto"
		switch {
		case device == "cuda" && gpus > 0:
			procs = gpus
		case device == "cuda":
			procs = 0 // torchrun counts the GPUs of the node when it starts
		default:
			procs = 1
		}
	}
	if device == "cuda" && gpus > 0 && procs > gpus {
		return nil, &ConfigError{Where: c.origin["parallel.nproc_per_node"],
			Msg: fmt.Sprintf("parallel.nproc_per_node = %d but only %d GPU(s) are visible", procs, gpus)}
	}
	l.Procs = procs
	if device == "cuda" && gpus == 0 {
		l.Note = "no GPU is visible here; on a GPU node torchrun starts one process per GPU"
	}
	l.Torchrun = device == "cuda" || procs > 1 || l.Nodes > 1
	if !l.Torchrun {
		l.Args = []string{"-m", "mdn.runner"}
		return l, nil
	}
	args := []string{"-m", "torch.distributed.run"}
	nproc := "gpu"
	if procs > 0 {
		nproc = strconv.Itoa(procs)
	}
	if l.Nodes == 1 && c.Str("parallel.rdzv_endpoint") == "" {
		args = append(args, "--standalone")
	} else {
		args = append(args, "--nnodes="+strconv.Itoa(l.Nodes))
		ep := c.Str("parallel.rdzv_endpoint")
		if c.Str("parallel.rdzv_backend") == "static" {
			host, port, ok := strings.Cut(ep, ":")
			if !ok {
				return nil, &ConfigError{Where: c.origin["parallel.rdzv_endpoint"],
					Msg: fmt.Sprintf("parallel.rdzv_endpoint = %q: expected host:port", ep)}
			}
			args = append(args, "--node-rank="+strconv.FormatInt(c.Int("parallel.node_rank"), 10),
				"--master-addr="+host, "--master-port="+port)
		} else {
			id := c.Str("parallel.rdzv_id")
			if id == "" {
				id = c.Name
			}
			args = append(args, "--rdzv-backend=c10d", "--rdzv-endpoint="+ep, "--rdzv-id="+id)
		}
	}
	if mp := c.Int("parallel.master_port"); mp > 0 && l.Nodes == 1 && c.Str("parallel.rdzv_endpoint") == "" {
		// a fixed port instead of --standalone's free one (e.g. firewalled hosts)
		args = []string{"-m", "torch.distributed.run", "--nnodes=1", "--master-addr=127.0.0.1",
			"--master-port=" + strconv.FormatInt(mp, 10)}
	}
	args = append(args, "--nproc-per-node="+nproc, "--no-python", "bash", "-c", workerScript, python, specFile)
	l.Args = args
	if device == "cuda" {
		l.Env = append(l.Env, "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
	}
	return l, nil
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
