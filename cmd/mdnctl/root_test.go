package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/mdnctl/mdnctl/launcher"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = execute(args, &o, &e)
	return code, o.String(), e.String()
}

// Every command, including those other files register, answers --help with its usage and exit 0.
func TestHelpEverywhere(t *testing.T) {
	root := newRootCmd(&globalOptions{})
	var walk func(c *cobra.Command, path []string)
	n := 0
	walk = func(c *cobra.Command, path []string) {
		args := append(append([]string{}, path...), "--help")
		code, out, errOut := runCLI(args...)
		n++
		if code != 0 || !strings.Contains(out, "Usage:") || errOut != "" {
			t.Errorf("mdnctl %s: exit %d, stderr %q, usage shown: %v", strings.Join(args, " "), code, errOut, strings.Contains(out, "Usage:"))
		}
		if c.Short == "" && c.Name() != "mdnctl" {
			t.Errorf("mdnctl %s has no Short description", strings.Join(path, " "))
		}
		for _, sub := range c.Commands() {
			if sub.Hidden {
				continue
			}
			walk(sub, append(append([]string{}, path...), sub.Name()))
		}
	}
	walk(root, nil)
	if n < 3 {
		t.Errorf("walked %d commands; want at least root, version, doctor", n)
	}
	for _, name := range []string{"version", "doctor"} {
		if c, _, err := root.Find([]string{name}); err != nil || c.Name() != name {
			t.Errorf("command %s not registered", name)
		}
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		code, out, errOut := runCLI("completion", shell)
		if code != 0 || !strings.Contains(out, "mdnctl") || errOut != "" {
			t.Errorf("completion %s: exit %d, stderr %q, %d bytes", shell, code, errOut, len(out))
		}
	}
	code, out, _ := runCLI("completion", "bash")
	if code != 0 || !strings.Contains(out, "bash completion V2 for mdnctl") {
		t.Errorf("bash completion script missing its header")
	}
	// Cobra's hidden __complete command answers what the shell asks for.
	code, out, _ = runCLI("__complete", "doc")
	if code != 0 || !strings.Contains(out, "doctor") {
		t.Errorf("completing 'doc': exit %d, %q", code, out)
	}
}

func TestErrorsAreOneLineAndNonZero(t *testing.T) {
	for _, args := range [][]string{
		{"no-such-command"},
		{"vresion"},
		{"--no-such-flag"},
		{"doctor", "--no-such-flag"},
		{"doctor", "--timeout", "soon"},
		{"version", "extra"},
		{"doctor", "--python", "/no/such/python"},
	} {
		code, out, errOut := runCLI(args...)
		lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
		if code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], "mdnctl: ") {
			t.Errorf("mdnctl %s: exit %d, stderr %q; want one 'mdnctl: ...' line and a non-zero exit", strings.Join(args, " "), code, errOut)
		}
		if strings.Contains(out, "Usage:") {
			t.Errorf("mdnctl %s: usage printed on an error (SilenceUsage)", strings.Join(args, " "))
		}
	}
	_, _, errOut := runCLI("vresion")
	if !strings.Contains(errOut, "did you mean version?") {
		t.Errorf("suggestion lost: %q", errOut)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI("version")
	if code != 0 || !strings.HasPrefix(out, "mdnctl ") || !strings.Contains(out, fmt.Sprintf("protocol v%d", launcher.ProtocolVersion)) {
		t.Errorf("version: %d %q", code, out)
	}
	code, out, _ = runCLI("version", "--json")
	var v struct {
		Mdnctl   string
		Protocol int
	}
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Protocol != launcher.ProtocolVersion || v.Mdnctl == "" {
		t.Errorf("version --json: %d %q", code, out)
	}
}

func TestReportError(t *testing.T) {
	crash := fmt.Errorf("sweep: %w", &launcher.ExitError{Job: "j", Code: 1, StderrTail: []string{"Traceback", "RuntimeError: boom"}})
	for _, tc := range []struct {
		name  string
		err   error
		quiet bool
		code  int
		want  string
	}{
		{"nil", nil, false, 0, ""},
		{"interrupted", fmt.Errorf("job x: %w", context.Canceled), false, 130, "mdnctl: interrupted\n"},
		{"plain", errors.New("bad"), false, 1, "mdnctl: bad\n"},
		{"exit code", &exitCodeError{code: 3, err: userErrorf("x")}, false, 3, "mdnctl: x\n"},
		{"multi-line", errors.New("a\n  b\n"), false, 1, "mdnctl: a | b\n"},
		{"crash shows the runner's stderr first", crash, false, 1,
			"mdnctl: last lines of the Python runner's stderr:\n  | Traceback\n  | RuntimeError: boom\nmdnctl: sweep: job j: python runner exited with status 1 (last stderr line: RuntimeError: boom)\n"},
		{"quiet: only the line", crash, true, 1, "mdnctl: sweep: job j: python runner exited with status 1 (last stderr line: RuntimeError: boom)\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			code := reportError(&globalOptions{Quiet: tc.quiet}, tc.err, &buf)
			if code != tc.code || buf.String() != tc.want {
				t.Errorf("reportError = %d %q, want %d %q", code, buf.String(), tc.code, tc.want)
			}
		})
	}
}
