# The two commands of the README: `make setup` (once) and `make test`. `.ci/run` runs exactly these.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PY := $(CURDIR)/.venv/bin/python

.PHONY: setup test test-go test-py test-slurm build gpu-test check-venv

setup:
	scripts/setup.sh

build:
	go build -o bin/mdnctl ./cmd/mdnctl

# go vet, go test ./... (the launcher again under the race detector), and pytest with the Triton kernels in the
# interpreter on the CPU. Non-zero on any failure.
# -k: run the Python tests even when a Go test failed, so one run shows every failure; still non-zero.
test:
	$(MAKE) --no-print-directory -k test-go test-py test-slurm

# The Slurm integration tests against a real single-node Slurm (scripts/slurm-up.sh: munge, slurmctld, slurmd
# with two fake GPUs). Needs root and the packages `make setup` installs; skipped with a message otherwise.
test-slurm: check-venv build
	@if [ "$$(id -u)" = 0 ] && command -v slurmctld >/dev/null 2>&1; then \
	  scripts/slurm-up.sh && MDN_SLURM_TEST=1 MDN_PYTHON=$(PY) go test -count=1 ./slurm -run 'Integration' && MDN_SLURM_TEST=1 MDN_PYTHON=$(PY) go test -count=1 ./cmd/mdnctl -run 'SlurmTrainIntegration'; \
	else echo "make: Slurm not installed or not root: skipping the Slurm integration tests (make setup as root installs it)"; fi

check-venv:
	@test -x $(PY) || { echo "make: $(PY) is missing: run 'make setup' first" >&2; exit 1; }

test-go: check-venv build
	go vet ./...
	MDN_PYTHON=$(PY) go test ./...
	@if [ "$$(go env CGO_ENABLED)" = 1 ]; then echo "MDN_PYTHON=$(PY) go test -race ./launcher/"; MDN_PYTHON=$(PY) go test -race ./launcher/; \
	else echo "make: no C compiler (cgo off): skipping the race-detector run of ./launcher/"; fi

test-py: check-venv
	cd triton && TRITON_INTERPRET=1 $(PY) -m pytest -q -rfE -p no:cacheprovider

# The same Python tests natively on a GPU (CUDA kernels; GPU-marked tests run).
gpu-test: check-venv
	cd triton && $(PY) -m pytest -q -rfE -p no:cacheprovider
