package slurm

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// directives returns the #SBATCH lines shared by every job mdnctl submits, from the config plus the
// job-specific ones (array, output, chdir) given in order first.
func directives(c Config, jobName string, specific []string, after []string) []string {
	d := []string{"--job-name=" + jobName}
	d = append(d, specific...)
	if c.Partition != "" {
		d = append(d, "--partition="+c.Partition)
	}
	if c.Account != "" {
		d = append(d, "--account="+c.Account)
	}
	if c.QOS != "" {
		d = append(d, "--qos="+c.QOS)
	}
	if c.Time != "" {
		d = append(d, "--time="+c.Time)
	}
	if c.GPUs > 0 {
		if c.GPUType != "" {
			d = append(d, fmt.Sprintf("--gres=gpu:%s:%d", c.GPUType, c.GPUs))
		} else {
			d = append(d, fmt.Sprintf("--gres=gpu:%d", c.GPUs))
		}
	}
	if c.CPUsPerTask > 0 {
		d = append(d, fmt.Sprintf("--cpus-per-task=%d", c.CPUsPerTask))
	}
	if c.Mem != "" {
		d = append(d, "--mem="+c.Mem)
	}
	if c.Constraint != "" {
		d = append(d, "--constraint="+c.Constraint)
	}
	if len(after) > 0 {
		// Without --kill-on-invalid-dep a job whose dependency failed stays pending forever
		// (DependencyNeverSatisfied): shared/docs/slurm.md.
		d = append(d, "--dependency="+strings.Join(after, ","), "--kill-on-invalid-dep=yes")
	}
	for _, x := range c.Extra {
		d = append(d, strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(x), "#SBATCH")))
	}
	return d
}

// scriptHeader writes the shebang, the comment block and the #SBATCH lines.
func scriptHeader(b *strings.Builder, comment []string, dirs []string) {
	b.WriteString("#!/bin/bash\n")
	for _, c := range comment {
		b.WriteString("# " + c + "\n")
	}
	for _, d := range dirs {
		b.WriteString("#SBATCH " + d + "\n")
	}
	b.WriteString("set -euo pipefail\n")
}

// setupLines writes the user's setup lines (module loads, environment activation) under a comment.
func setupLines(b *strings.Builder, c Config) {
	if len(c.Setup) == 0 {
		return
	}
	b.WriteString("\n# setup lines from the [slurm] table\n")
	for _, s := range c.Setup {
		b.WriteString(s + "\n")
	}
}

var safeShell = regexp.MustCompile(`^[A-Za-z0-9_./:=@%+,\-]+$`)

// shq quotes s for bash (single quotes unless it is plainly safe).
func shq(s string) string {
	if s != "" && safeShell.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

func shjoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shq(a)
	}
	return strings.Join(q, " ")
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err == nil && d < 0 {
		err = fmt.Errorf("negative duration")
	}
	return d, err
}

// jobNameOf makes a Slurm-friendly job name: mdn-<kind>-<name>, limited to safe characters.
func jobNameOf(c Config, kind, name string) string {
	if c.JobName != "" {
		return c.JobName
	}
	clean := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, name)
	if len(clean) > 48 {
		clean = clean[:48]
	}
	if clean == "" {
		return "mdn-" + kind
	}
	return "mdn-" + kind + "-" + clean
}
