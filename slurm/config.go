package slurm

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/BurntSushi/toml"
)

// Config is the [slurm] table of a sweep file or a training config. Zero values mean "leave it to Slurm"
// (no directive is written) unless a default is stated.
type Config struct {
	Partition    string   `toml:"partition" json:"partition,omitempty"`           // --partition
	Account      string   `toml:"account" json:"account,omitempty"`               // --account
	QOS          string   `toml:"qos" json:"qos,omitempty"`                       // --qos
	Time         string   `toml:"time" json:"time,omitempty"`                     // --time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
	GPUs         int      `toml:"gpus" json:"gpus,omitempty"`                     // --gres=gpu:N (per array task; per node for training)
	GPUType      string   `toml:"gpu_type" json:"gpu_type,omitempty"`             // --gres=gpu:TYPE:N
	CPUsPerTask  int      `toml:"cpus_per_task" json:"cpus_per_task,omitempty"`   // --cpus-per-task
	Mem          string   `toml:"mem" json:"mem,omitempty"`                       // --mem, e.g. "64G"
	Constraint   string   `toml:"constraint" json:"constraint,omitempty"`         // --constraint
	JobName      string   `toml:"job_name" json:"job_name,omitempty"`             // --job-name (default mdn-<kind>-<name>)
	Extra        []string `toml:"extra" json:"extra,omitempty"`                   // more directives: "--exclusive", "--mail-type=END"
	Setup        []string `toml:"setup" json:"setup,omitempty"`                   // shell lines run first: "module load cuda/12.4"
	Python       string   `toml:"python" json:"python,omitempty"`                 // interpreter on the compute nodes (default: the local one)
	Binary       string   `toml:"binary" json:"binary,omitempty"`                 // mdnctl on the compute nodes (default: this binary)
	Concurrency  int      `toml:"concurrency" json:"concurrency,omitempty"`       // sweeps: array tasks at a time (%N); 0 = no limit
	Shards       int      `toml:"shards" json:"shards,omitempty"`                 // sweeps: array tasks (default: see DefaultShards)
	PointTimeout string   `toml:"point_timeout" json:"point_timeout,omitempty"`   // sweeps: per point, Go duration ("10m"); "" = none
	Nodes        int      `toml:"nodes" json:"nodes,omitempty"`                   // training: nodes (default 1)
	ProcsPerNode int      `toml:"procs_per_node" json:"procs_per_node,omitempty"` // training: torchrun --nproc_per_node (default: gpus, else 1)
	Rendezvous   string   `toml:"rendezvous" json:"rendezvous,omitempty"`         // training: "static" (default: --node_rank) or "c10d"
	Port         int      `toml:"port" json:"port,omitempty"`                     // training: rendezvous port (default 15000 + job id % 20000)
}

// MaxArrayTasks is Slurm's default MaxArraySize - 1: the largest array index a default cluster accepts.
const MaxArrayTasks = 1000

var (
	timeRE = regexp.MustCompile(`^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}|\d+-\d{1,2}:\d{1,2}:\d{1,2}|infinite|UNLIMITED|unlimited)$`)
	wordRE = regexp.MustCompile(`^[A-Za-z0-9_.,:+\-=/@%]+$`)
	memRE  = regexp.MustCompile(`^\d+[KMGT]?B?$`)
	// decode type errors are plain errors: "toml: line 2 (last key \"slurm.gpus\"): incompatible types: ..."
	tomlTypeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]+)"\): (.*)$`)
	extraRE       = regexp.MustCompile(`^--[a-z][a-z0-9-]*(=.+)?$`)
)

// FieldError names the offending [slurm] key, its value and what was expected.
type FieldError struct {
	File   string
	Line   int
	Key    string
	Value  any
	Expect string
}

func (e *FieldError) Error() string {
	loc := ""
	if e.File != "" {
		loc = e.File
		if e.Line > 0 {
			loc += fmt.Sprintf(":%d", e.Line)
		}
		loc += ": "
	}
	return fmt.Sprintf("%sslurm.%s = %#v: %s", loc, e.Key, e.Value, e.Expect)
}

// Validate checks every field; the first problem is returned as a *FieldError.
func (c *Config) Validate() error {
	fe := func(key string, v any, expect string) error { return &FieldError{Key: key, Value: v, Expect: expect} }
	for _, f := range []struct{ key, v string }{{"partition", c.Partition}, {"account", c.Account}, {"qos", c.QOS},
		{"constraint", c.Constraint}, {"job_name", c.JobName}, {"gpu_type", c.GPUType}} {
		if f.v != "" && !wordRE.MatchString(f.v) {
			return fe(f.key, f.v, "expected a Slurm name (letters, digits, _ . , : + - = / @ %; no spaces)")
		}
	}
	if c.Time != "" && !timeRE.MatchString(c.Time) {
		return fe("time", c.Time, `expected a Slurm time limit: "MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM" or "D-HH:MM:SS"`)
	}
	if c.Mem != "" && !memRE.MatchString(c.Mem) {
		return fe("mem", c.Mem, `expected a size like "64G" or "16000M"`)
	}
	for k, v := range map[string]int{"gpus": c.GPUs, "cpus_per_task": c.CPUsPerTask, "concurrency": c.Concurrency,
		"shards": c.Shards, "nodes": c.Nodes, "procs_per_node": c.ProcsPerNode} {
		if v < 0 {
			return fe(k, v, "expected 0 (default) or a positive integer")
		}
	}
	if c.Shards > MaxArrayTasks {
		return fe("shards", c.Shards, fmt.Sprintf("expected at most %d array tasks (Slurm's default MaxArraySize)", MaxArrayTasks))
	}
	if c.Port != 0 && (c.Port < 1024 || c.Port > 65535) {
		return fe("port", c.Port, "expected 0 (derived from the job id) or a port in 1024..65535")
	}
	switch c.Rendezvous {
	case "", "static", "c10d":
	default:
		return fe("rendezvous", c.Rendezvous, `expected "static" (torchrun --node_rank from SLURM_NODEID) or "c10d"`)
	}
	if c.PointTimeout != "" {
		if _, err := parseDuration(c.PointTimeout); err != nil {
			return fe("point_timeout", c.PointTimeout, `expected a duration like "90s" or "10m"`)
		}
	}
	for i, x := range c.Extra {
		x = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(x), "#SBATCH"))
		if !extraRE.MatchString(x) || strings.ContainsAny(x, "\n\r") {
			return fe(fmt.Sprintf("extra[%d]", i), c.Extra[i], `expected one sbatch option like "--exclusive" or "--mail-type=END"`)
		}
		switch name := strings.SplitN(x, "=", 2)[0]; name {
		case "--array", "--output", "--error", "--chdir", "--parsable", "--wrap":
			return fe(fmt.Sprintf("extra[%d]", i), c.Extra[i], name+" is set by mdnctl and cannot be overridden")
		}
	}
	for i, s := range c.Setup {
		if strings.ContainsAny(s, "\n\r") {
			return fe(fmt.Sprintf("setup[%d]", i), s, "expected one shell line (no newlines; use several entries)")
		}
	}
	for _, f := range []struct{ key, v string }{{"python", c.Python}, {"binary", c.Binary}} {
		if f.v != "" && (!strings.HasPrefix(f.v, "/") || strings.ContainsAny(f.v, "\n\r")) {
			return fe(f.key, f.v, "expected an absolute path that exists on the compute nodes")
		}
	}
	return nil
}

// ParseConfigTOML reads the [slurm] table of a whole TOML file (other tables are ignored), rejects unknown keys
// and wrong types, and validates the values. Errors name file:line, the key, the value and the expectation.
// A file without a [slurm] table gives the zero Config.
func ParseConfigTOML(filename string, data []byte) (Config, error) {
	var doc struct {
		Slurm Config `toml:"slurm"`
	}
	md, err := toml.Decode(string(data), &doc)
	if err != nil {
		var pe toml.ParseError
		var ppe *toml.ParseError
		if errors.As(err, &ppe) {
			pe = *ppe
		}
		if ppe != nil || errors.As(err, &pe) {
			msg := pe.Message
			if pe.LastKey != "" {
				msg = pe.LastKey + ": " + msg
			}
			return Config{}, fmt.Errorf("%s:%d: %s", filename, pe.Position.Line, msg)
		}
		if m := tomlTypeErrRE.FindStringSubmatch(err.Error()); m != nil {
			return Config{}, fmt.Errorf("%s:%s: %s: %s", filename, m[1], m[2], m[3])
		}
		return Config{}, fmt.Errorf("%s: %w", filename, err)
	}
	for _, k := range md.Undecoded() {
		if len(k) >= 2 && k[0] == "slurm" {
			return Config{}, &FieldError{File: filename, Line: keyLine(data, k[len(k)-1]), Key: strings.Join(k[1:], "."),
				Value: "…", Expect: "unknown key (known: " + strings.Join(configKeys(), ", ") + ")"}
		}
	}
	if err := doc.Slurm.Validate(); err != nil {
		var f *FieldError
		if errors.As(err, &f) {
			f.File = filename
			f.Line = keyLine(data, strings.SplitN(f.Key, "[", 2)[0])
		}
		return Config{}, err
	}
	return doc.Slurm, nil
}

// keyLine finds the line of `key =` inside the [slurm] table (0 if not found).
func keyLine(data []byte, key string) int {
	in := false
	for i, line := range bytes.Split(data, []byte("\n")) {
		t := strings.TrimSpace(string(line))
		if strings.HasPrefix(t, "[") {
			in = t == "[slurm]"
			continue
		}
		if in && (strings.HasPrefix(t, key+" ") || strings.HasPrefix(t, key+"=")) {
			return i + 1
		}
	}
	return 0
}

func configKeys() []string {
	return []string{"partition", "account", "qos", "time", "gpus", "gpu_type", "cpus_per_task", "mem", "constraint",
		"job_name", "extra", "setup", "python", "binary", "concurrency", "shards", "point_timeout", "nodes",
		"procs_per_node", "rendezvous", "port"}
}
