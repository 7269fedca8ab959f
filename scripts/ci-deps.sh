#!/usr/bin/env bash
# System packages the test suite needs beyond Go and Python: Debian's chromium, for the headless-browser test
# of the HTML report (report/html_browser_test.go). Idempotent: does nothing when chromium is already there.
#   scripts/ci-deps.sh          install what is missing (needs root or sudo, and apt-get)
#   scripts/ci-deps.sh --check  only say what is missing (exit 1 if anything is)
set -euo pipefail

check=0
for a in "$@"; do
  case "$a" in
    --check) check=1 ;;
    *) echo "ci-deps: unknown argument '$a' (expected --check)" >&2; exit 2 ;;
  esac
done

have_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

if have_chromium; then
  echo "ci-deps: chromium present ($(command -v chromium || command -v chromium-browser))"
  exit 0
fi
if [ "$check" = 1 ]; then
  echo "ci-deps: chromium missing (run scripts/ci-deps.sh to install it)" >&2
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { echo "ci-deps: ERROR: chromium is missing and apt-get is not available; install chromium by hand" >&2; exit 1; }
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "ci-deps: ERROR: need root (or sudo) to apt-get install chromium" >&2; exit 1; }
  SUDO="sudo"
fi
echo "ci-deps: installing chromium (Debian package)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
have_chromium || { echo "ci-deps: ERROR: chromium still not found after installing it" >&2; exit 1; }
echo "ci-deps: chromium installed ($(command -v chromium || command -v chromium-browser))"
