package main

import (
	"context"
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain lets testscript run the test binary as `mdnctl` (scripts in testdata/*/). With MDN_SWEEP_FAKE=1 the
// sweep command uses the fake runner of sweep_test.go instead of Python.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"mdnctl": func() {
			if os.Getenv("MDN_SWEEP_FAKE") == "1" {
				f := &fakeSweepRunner{}
				sweepStart = f.start
				sweepDetectGPUs = func(context.Context) []string { return nil }
			}
			os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
		},
	})
}

// CLI scripts for `mdnctl sweep` (plan, errors, sandbox, run, resume, rerun) against the fake runner.
func TestSweepScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/sweep",
		Setup: func(env *testscript.Env) error {
			env.Setenv("MDN_SWEEP_FAKE", "1")
			env.Setenv("MDN_PYTHON", fakePy)
			return nil
		},
	})
}
