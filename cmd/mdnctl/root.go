package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"github.com/mdnctl/mdnctl/launcher"
)

// globalOptions are the flags every command sees.
type globalOptions struct {
	ConfigPath string // --config: mdnctl settings TOML (python, results dir, ...)
	JSON       bool   // --json: machine-readable output where the output is data
	Quiet      bool   // --quiet: no progress output
	Python     string // --python: interpreter override
	RepoRoot   string // the checkout holding triton/mdn (found from the working directory or the binary)

	Stdout io.Writer
	Stderr io.Writer
	IsTTY  bool
}

// PythonPath resolves the interpreter (flag, MDN_PYTHON, .venv, PATH).
func (g *globalOptions) PythonPath() (string, string, error) {
	return launcher.FindPython(g.Python, g.RepoRoot)
}

// userError is an error whose message is complete for the user: printed as one line, no usage.
type userError struct{ msg string }

func (e *userError) Error() string { return e.msg }

func userErrorf(format string, args ...any) error {
	return &userError{msg: fmt.Sprintf(format, args...)}
}

// exitCodeError lets a command choose its exit code (e.g. doctor: 1 when something required is missing).
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }
func (e *exitCodeError) Unwrap() error { return e.err }

var registry []func(*globalOptions) *cobra.Command

// register adds a subcommand constructor; each command file calls it from init().
func register(f func(*globalOptions) *cobra.Command) { registry = append(registry, f) }

func newRootCmd(g *globalOptions) *cobra.Command {
	root := &cobra.Command{
		Use:   "mdnctl",
		Short: "Momentum DeltaNet kernels: sweep variants, train, report",
		Long: `mdnctl drives the Momentum DeltaNet toolkit: it generates and sweeps kernel variants over GPUs,
launches training, and turns results into tables, plots and HTML reports.
Python work runs in 'python -m mdn.runner' (docs/protocol.md).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.ConfigPath, "config", "", "mdnctl settings file (TOML)")
	pf.BoolVar(&g.JSON, "json", false, "print machine-readable JSON where the output is data")
	pf.BoolVarP(&g.Quiet, "quiet", "q", false, "no progress output")
	pf.StringVar(&g.Python, "python", "", "Python interpreter (default: $MDN_PYTHON, .venv/bin/python, python3)")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath())
	})
	for _, f := range registry {
		root.AddCommand(f(g))
	}
	return root
}

func findRepoRoot() string {
	if d := os.Getenv("MDN_REPO"); d != "" {
		return d
	}
	if wd, err := os.Getwd(); err == nil {
		if r := launcher.FindRepoRoot(wd); r != "" {
			return r
		}
	}
	if exe, err := os.Executable(); err == nil {
		return launcher.FindRepoRoot(exe)
	}
	return ""
}

// execute runs the CLI and returns the process exit code. An error prints as ONE line on stderr
// ("mdnctl: ..."); when the Python runner crashed, the last lines of its stderr come first, as context.
func execute(args []string, stdout, stderr io.Writer) int {
	g := &globalOptions{Stdout: stdout, Stderr: stderr, RepoRoot: findRepoRoot()}
	if f, ok := stdout.(*os.File); ok {
		g.IsTTY = isatty.IsTerminal(f.Fd())
	}
	root := newRootCmd(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first Ctrl-C the launcher shuts Python down (SIGTERM, grace, SIGKILL); a second Ctrl-C
		// gets the default action and ends mdnctl at once (the kernel then kills the runner: Pdeathsig).
		<-ctx.Done()
		stop()
	}()
	return reportError(g, root.ExecuteContext(ctx), stderr)
}

// reportError prints err for the user and returns the exit code: 0 for nil, 130 when interrupted, the code
// of an exitCodeError, else 1.
func reportError(g *globalOptions, err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "mdnctl: interrupted")
		return 130
	}
	var tailer launcher.Tailer
	var ue *userError
	if !g.Quiet && errors.As(err, &tailer) && !errors.As(err, &ue) {
		if tail := tailer.Tail(); len(tail) > 0 {
			if len(tail) > 20 {
				tail = tail[len(tail)-20:]
			}
			fmt.Fprintln(stderr, "mdnctl: last lines of the Python runner's stderr:")
			for _, l := range tail {
				fmt.Fprintln(stderr, "  | "+l)
			}
		}
	}
	fmt.Fprintf(stderr, "mdnctl: %s\n", errorLine(err))
	var ec *exitCodeError
	if errors.As(err, &ec) {
		return ec.code
	}
	return 1
}

// errorLine renders err as one line. Cobra's "unknown command" error carries suggestions on extra lines.
func errorLine(err error) string {
	msg := strings.TrimSpace(err.Error())
	if i := strings.Index(msg, "\n\nDid you mean this?\n"); i >= 0 {
		var sugg []string
		for _, l := range strings.Split(msg[i:], "\n")[3:] {
			if l = strings.TrimSpace(l); l != "" {
				sugg = append(sugg, l)
			}
		}
		msg = fmt.Sprintf("%s (did you mean %s?)", msg[:i], strings.Join(sugg, " or "))
	}
	if strings.HasPrefix(msg, "unknown command ") {
		msg += "; see 'mdnctl --help'"
	}
	if !strings.ContainsAny(msg, "\r\n") {
		return msg
	}
	parts := strings.FieldsFunc(msg, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return strings.Join(parts, " | ")
}
