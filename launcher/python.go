package launcher

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// FindPython picks the interpreter: explicit (flag/config), $MDN_PYTHON, <repo>/.venv/bin/python, python3 on PATH.
// It returns the path and where it came from.
func FindPython(explicit, repoRoot string) (string, string, error) {
	if explicit != "" {
		return explicit, "config", nil
	}
	if p := os.Getenv("MDN_PYTHON"); p != "" {
		return p, "MDN_PYTHON", nil
	}
	if repoRoot != "" {
		p := filepath.Join(repoRoot, ".venv", "bin", "python")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, ".venv", nil
		}
	}
	if p, err := exec.LookPath("python3"); err == nil {
		return p, "PATH", nil
	}
	return "", "", fmt.Errorf("no Python interpreter: set MDN_PYTHON, run scripts/setup.sh to create .venv, or put python3 on PATH")
}

// FindRepoRoot walks up from dir to the directory holding go.mod and triton/mdn (the mdnctl checkout).
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
