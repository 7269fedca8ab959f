#!/usr/bin/env bash
# One-command set-up: .venv with pinned torch/triton, the `mdn` package (editable), bin/mdnctl, then the demo.
# Idempotent: a second run checks, installs nothing new and is fast.
#   scripts/setup.sh            set up and run the demo (mdnctl doctor + the CPU demo sweep)
#   scripts/setup.sh --no-demo  set up only (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=1
for a in "$@"; do
  case "$a" in
    --no-demo) DEMO=0 ;;
    *) echo "setup: unknown argument '$a' (expected --no-demo)" >&2; exit 2 ;;
  esac
done

die() { echo "setup: ERROR: $*" >&2; exit 1; }
step() { echo "setup: $*"; }

TORCH_SPEC="torch==2.11.*"
TRITON_SPEC="triton==3.6.*"

# --- Python -------------------------------------------------------------------------------------------
PY=${MDN_SETUP_PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.12 python3.11 python3.10 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert (3,10) <= sys.version_info[:2] < (3,14)' 2>/dev/null; then
      PY=$(command -v "$c"); break
    fi
  done
fi
[ -n "$PY" ] || die "need Python 3.10-3.13 (torch 2.11 wheels); set MDN_SETUP_PYTHON=/path/to/python"
command -v go >/dev/null 2>&1 || die "need Go >= 1.24 on PATH to build bin/mdnctl"

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv || die "could not create .venv (is the venv module installed?)"
fi
VPY=$ROOT/.venv/bin/python

stamp=.venv/.mdn-setup-stamp
want="$(cat triton/pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c 'import torch, triton, mdn, pytest, numpy' 2>/dev/null; then
  step "Python environment up to date ($("$VPY" -c 'import torch, triton; print(f"torch {torch.__version__}, triton {triton.__version__}")'))"
else
  step "installing $TORCH_SPEC $TRITON_SPEC numpy pytest (first time: a large download)"
  "$VPY" -m pip install -q --disable-pip-version-check --upgrade pip || die "pip upgrade failed (no network to the package index?)"
  "$VPY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC" "$TRITON_SPEC" "numpy<2.4" pytest \
    || die "installing torch/triton failed (no network to the package index?)"
  step "installing the mdn package (editable) from triton/"
  "$VPY" -m pip install -q --disable-pip-version-check --no-build-isolation -e triton \
    || die "pip install -e triton failed"
  echo "$want" > "$stamp"
fi

# --- Go -----------------------------------------------------------------------------------------------
step "building bin/mdnctl"
go build -o bin/mdnctl ./cmd/mdnctl || die "go build failed"

if [ "$DEMO" = 1 ]; then
  step "demo: bin/mdnctl doctor"
  bin/mdnctl doctor || true
  step "demo: bin/mdnctl sweep (the embedded CPU demo sweep)"
  bin/mdnctl sweep
fi
step "done"
