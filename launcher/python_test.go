package launcher

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindPythonOrder(t *testing.T) {
	repo := t.TempDir()
	venvPy := filepath.Join(repo, ".venv", "bin", "python")
	os.MkdirAll(filepath.Dir(venvPy), 0o755)
	os.WriteFile(venvPy, []byte("#!/bin/sh\n"), 0o755)
	envPy := filepath.Join(t.TempDir(), "python-env")
	os.WriteFile(envPy, []byte("#!/bin/sh\n"), 0o755)
	flagPy := filepath.Join(t.TempDir(), "python-flag")
	os.WriteFile(flagPy, []byte("#!/bin/sh\n"), 0o755)

	t.Setenv("MDN_PYTHON", envPy)
	if p, src, err := FindPython(flagPy, repo); err != nil || p != flagPy || src != FromFlag {
		t.Errorf("flag first: %s %s %v", p, src, err)
	}
	if p, src, err := FindPython("", repo); err != nil || p != envPy || src != FromEnv {
		t.Errorf("MDN_PYTHON second: %s %s %v", p, src, err)
	}
	t.Setenv("MDN_PYTHON", "")
	if p, src, err := FindPython("", repo); err != nil || p != venvPy || src != FromVenv {
		t.Errorf(".venv third: %s %s %v", p, src, err)
	}
	empty := t.TempDir()
	t.Setenv("PATH", empty)
	if _, _, err := FindPython("", t.TempDir()); err == nil || !strings.Contains(err.Error(), "make setup") {
		t.Errorf("nothing found: %v, want an actionable error", err)
	}
	py3 := filepath.Join(empty, "python3")
	os.WriteFile(py3, []byte("#!/bin/sh\n"), 0o755)
	if p, src, err := FindPython("", t.TempDir()); err != nil || p != py3 || src != FromPath {
		t.Errorf("PATH last: %s %s %v", p, src, err)
	}
}

func TestFindPythonWrongExplicitChoiceIsAnError(t *testing.T) {
	repo := t.TempDir()
	if _, _, err := FindPython("/no/such/python", repo); err == nil || !strings.Contains(err.Error(), "/no/such/python") {
		t.Errorf("bad --python: %v", err)
	}
	t.Setenv("MDN_PYTHON", "/no/such/python")
	if _, _, err := FindPython("", repo); err == nil || !strings.Contains(err.Error(), "MDN_PYTHON=/no/such/python") {
		t.Errorf("bad MDN_PYTHON: %v", err)
	}
	t.Setenv("MDN_PYTHON", repo) // a directory
	if _, _, err := FindPython("", repo); err == nil {
		t.Error("a directory is not an interpreter")
	}
}

func TestFindRepoRoot(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "triton", "mdn"), 0o755)
	os.WriteFile(filepath.Join(root, "triton", "mdn", "__init__.py"), nil, 0o644)
	deep := filepath.Join(root, "a", "b")
	os.MkdirAll(deep, 0o755)
	if got := FindRepoRoot(deep); got != root {
		t.Errorf("FindRepoRoot = %q, want %q", got, root)
	}
	if got := FindRepoRoot(t.TempDir()); got != "" {
		t.Errorf("FindRepoRoot outside a checkout = %q", got)
	}
}
