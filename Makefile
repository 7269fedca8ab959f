# The two commands of the README: `make setup` and `make test`.
SHELL := /bin/bash
PY := $(CURDIR)/.venv/bin/python

.PHONY: setup test test-go test-py build gpu-test

setup:
	scripts/setup.sh

build:
	go build -o bin/mdnctl ./cmd/mdnctl

test: test-go test-py

test-go: build
	go vet ./...
	MDN_PYTHON=$(PY) go test ./...

# The Triton kernels run in the interpreter on the CPU; the same tests run natively on a GPU.
test-py:
	cd triton && TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider

gpu-test:
	cd triton && $(PY) -m pytest -q -p no:cacheprovider
