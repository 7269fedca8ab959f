package launcher

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Where an interpreter came from (the second value FindPython returns).
const (
	FromFlag  = "--python/config"
	FromEnv   = "MDN_PYTHON"
	FromVenv  = ".venv"
	FromPath  = "PATH"
	setupHint = "run `make setup` (creates .venv), or set MDN_PYTHON=/path/to/python"
)

// FindPython picks the interpreter: explicit (flag/config), $MDN_PYTHON, <repo>/.venv/bin/python, python3 on
// PATH — the first one set wins, and it must exist (an explicit choice that is wrong is an error, never
// silently skipped). It returns the absolute path and where it came from.
func FindPython(explicit, repoRoot string) (string, string, error) {
	if explicit != "" {
		p, err := lookExecutable(explicit)
		if err != nil {
			return "", FromFlag, fmt.Errorf("python interpreter %q (from --python/config): %v", explicit, err)
		}
		return p, FromFlag, nil
	}
	if env := os.Getenv("MDN_PYTHON"); env != "" {
		p, err := lookExecutable(env)
		if err != nil {
			return "", FromEnv, fmt.Errorf("MDN_PYTHON=%s: %v; fix or unset it", env, err)
		}
		return p, FromEnv, nil
	}
	if repoRoot != "" {
		p := filepath.Join(repoRoot, ".venv", "bin", "python")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, FromVenv, nil
		}
	}
	if p, err := exec.LookPath("python3"); err == nil {
		return p, FromPath, nil
	}
	return "", "", fmt.Errorf("no Python interpreter found (no .venv, no python3 on PATH): %s", setupHint)
}

// lookExecutable resolves a name on PATH or checks a path, returning an absolute path.
func lookExecutable(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		if st, serr := os.Stat(name); serr != nil {
			return "", fmt.Errorf("not found")
		} else if st.IsDir() {
			return "", fmt.Errorf("is a directory")
		}
		return "", fmt.Errorf("not executable")
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	return p, nil
}

// FindRepoRoot walks up from dir to the mdnctl checkout (the directory holding triton/mdn/__init__.py);
// "" when there is none.
func FindRepoRoot(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "triton", "mdn", "__init__.py")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}
