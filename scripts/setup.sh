#!/usr/bin/env bash
# One-command set-up (`make setup`): .venv with the `mdn` package from triton/ (editable) and its pinned
# dependencies (torch, triton, numpy) plus pytest; bin/mdnctl; then a short demo (mdnctl doctor, and the embedded demo sweep once the sweep
# command exists) so a newcomer sees it work.
#
# Idempotent: a second run checks, installs nothing, rebuilds nothing that is current, and takes seconds.
# Every failure stops here with one "setup: ERROR: ..." line that says what to do.
#
#   scripts/setup.sh            set up, then run the demo
#   scripts/setup.sh --no-demo  set up only
# Environment:
#   MDN_SETUP_PYTHON=/path/to/python3.X   the Python to create .venv with (default: the first of
#                                         python3.12, python3.11, python3.10, python3.13, python3 that fits)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=1
for a in "$@"; do
  case "$a" in
    --no-demo) DEMO=0 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "setup: unknown argument '$a' (expected --no-demo)" >&2; exit 2 ;;
  esac
done

die() { echo "setup: ERROR: $*" >&2; exit 1; }
step() { echo "setup: $*"; }
trap 'rc=$?; echo "setup: ERROR: \"$BASH_COMMAND\" failed (exit $rc) at scripts/setup.sh:$LINENO" >&2' ERR

# The pins (torch 2.11.*, triton 3.6.*: the versions of the GPU machine, so CPU and GPU results come from the
# same code; numpy) live in ONE place: the dependencies of triton/pyproject.toml.
PY_MIN=3.10
PY_MAX=3.13 # torch 2.11 / triton 3.6 wheels
PIP=(--disable-pip-version-check --retries 2 --timeout 60)

py_ok() { # py_ok PYTHON: is it a CPython within [PY_MIN, PY_MAX]?
  "$1" -c "import sys; v=sys.version_info[:2]; sys.exit(0 if (${PY_MIN/./,}) <= v <= (${PY_MAX/./,}) else 1)" 2>/dev/null
}

# --- tools --------------------------------------------------------------------------------------------------
command -v go >/dev/null 2>&1 || die "Go is not on PATH: install Go (https://go.dev/doc/install, version $(awk '/^go /{print $2}' go.mod) or newer) and run setup again"
go_have=$(go env GOVERSION | sed 's/^go//')
go_want=$(awk '/^go /{print $2}' go.mod)
if [ "$(printf '%s\n%s\n' "$go_want" "$go_have" | sort -V | head -1)" != "$go_want" ]; then
  step "note: Go $go_have is older than go.mod's $go_want; Go will fetch the $go_want toolchain (needs network)"
fi

PY=${MDN_SETUP_PYTHON:-}
if [ -n "$PY" ]; then
  command -v "$PY" >/dev/null 2>&1 || die "MDN_SETUP_PYTHON=$PY: not found"
  py_ok "$PY" || die "MDN_SETUP_PYTHON=$PY is Python $("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo '?'); need $PY_MIN to $PY_MAX (torch 2.11 wheels)"
elif [ ! -x .venv/bin/python ]; then
  for c in python3.12 python3.11 python3.10 python3.13 python3; do
    if command -v "$c" >/dev/null 2>&1 && py_ok "$c"; then
      PY=$(command -v "$c"); break
    fi
  done
  [ -n "$PY" ] || die "no Python $PY_MIN to $PY_MAX on PATH (found: $(python3 --version 2>&1 || echo none)); install one, or set MDN_SETUP_PYTHON=/path/to/python3.X"
fi

# --- .venv --------------------------------------------------------------------------------------------------
if [ -x .venv/bin/python ] && ! py_ok .venv/bin/python; then
  die ".venv has Python $(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo '(broken)'), need $PY_MIN to $PY_MAX: remove it (rm -rf .venv) and run setup again"
fi
if [ -n "${MDN_SETUP_PYTHON:-}" ] && [ -x .venv/bin/python ] &&
   [ "$(.venv/bin/python -c 'import sys; print(sys.version_info[:2])')" != "$("$PY" -c 'import sys; print(sys.version_info[:2])')" ]; then
  die ".venv was made with another Python than MDN_SETUP_PYTHON=$PY: remove it (rm -rf .venv) and run setup again"
fi
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $("$PY" --version 2>&1) ($PY)"
  rm -rf .venv
  "$PY" -m venv .venv || { rm -rf .venv; die "could not create .venv with $PY (on Debian/Ubuntu: apt-get install python3-venv)"; }
fi
VPY=$ROOT/.venv/bin/python

# The stamp records what the environment was built from; the import check catches a damaged one.
stamp=.venv/.mdn-setup-stamp
want="$( { cat triton/pyproject.toml; "$VPY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
versions() { "$VPY" -c 'import sys, torch, triton, numpy, pytest, mdn.runner; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}, numpy {numpy.__version__}")' 2>/dev/null; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && have=$(versions); then
  step "Python environment up to date ($have)"
else
  step "installing the mdn package (editable) from triton/ with its pinned dependencies and pytest (the first time is a large download)"
  "$VPY" -m pip install -q "${PIP[@]}" --upgrade pip \
    || die "pip could not reach the package index (no network?); fix the network or proxy and run setup again"
  # PYTHONWARNINGS: setuptools warns that folders named like the package may shadow it; the runner guards
  # against that (PYTHONSAFEPATH, docs/protocol.md).
  PYTHONWARNINGS=ignore "$VPY" -m pip install -q "${PIP[@]}" -e "triton[test]" \
    || die "pip install -e 'triton[test]' failed (no network? no torch/triton wheel for $("$VPY" --version 2>&1) on $(uname -m)?); see pip's message above"
  have=$(versions) \
    || die "the new environment does not import torch, triton, numpy, pytest and mdn.runner; remove .venv and run setup again"
  echo "$want" > "$stamp"
  step "Python environment ready ($have)"
fi

# --- bin/mdnctl ---------------------------------------------------------------------------------------------
# Build next to the binary and replace it only when it changed, so a second run touches nothing.
mkdir -p bin
go build -o bin/.mdnctl.new ./cmd/mdnctl \
  || { rm -f bin/.mdnctl.new; die "go build ./cmd/mdnctl failed (no network for the Go module download? see above)"; }
if [ -f bin/mdnctl ] && cmp -s bin/.mdnctl.new bin/mdnctl; then
  rm -f bin/.mdnctl.new
  step "bin/mdnctl up to date"
else
  mv -f bin/.mdnctl.new bin/mdnctl
  step "built bin/mdnctl"
fi

# --- system packages for the integration tests --------------------------------------------------------------
# Debian's chromium (the HTML report is rendered and screenshotted headless) and a single-node Slurm (slurmctld,
# slurmd, munge: started by `make test`). Installed only where we are root with apt-get; elsewhere those tests
# skip with a message (and fail under CI=true, where they must run).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  scripts/ci-deps.sh || die "installing chromium for the report browser test failed (see above)"
  if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    step "installing slurmctld, slurmd, slurm-client and munge (the Slurm integration tests)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; } \
      || die "installing Slurm for its integration tests failed (apt-get; see above)"
  fi
else
  step "note: not root with apt-get: chromium and Slurm not installed; their integration tests will skip"
fi

if [ "$DEMO" = 1 ]; then
  step "demo: bin/mdnctl doctor"
  bin/mdnctl doctor || die "mdnctl doctor found a problem (see above)"
  if bin/mdnctl sweep --help >/dev/null 2>&1; then
    step "demo: bin/mdnctl sweep (the embedded CPU demo sweep)"
    bin/mdnctl sweep || die "the demo sweep failed (see above)"
  fi
fi
step "done. Next: make test"
