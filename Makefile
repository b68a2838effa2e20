# repnas_mm: the two commands a new user needs are `make demo` and `make test`.
#
#   make setup     create .venv/ and install the pinned stack (mmcv ops built once, then cached)
#   make test      setup if needed, then the test suite (installs Debian's Fashion-MNIST as root)
#   make test-fast the same without the tests marked slow (a few minutes)
#   make lint      ruff (pyflakes + pycodestyle; the library at 79 columns, the rest at 100)
#   make demo      setup if needed, then the main job on an embedded real data set
#   make gpu-check on a machine with an NVIDIA GPU: tests, latency, search, DCN (docs/gpu.md)
#
# Use another environment instead of .venv:   make test VENV=/path/to/env
# (it is created if missing; an existing one only gets what it lacks).

SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.repnas_mm-setup
SETUP_INPUTS := requirements/torch.txt requirements/runtime.txt requirements/tests.txt \
	requirements/deploy.txt requirements/mim.txt requirements/cuda.txt requirements/ray.txt \
	requirements/build.txt setup.py pyproject.toml scripts/setup_env.sh scripts/build_mmcv.py
PYTEST_ARGS ?=
DEMO_ARGS ?=
GPU_CHECK_ARGS ?=

.PHONY: help setup test test-fast lint demo gpu-check clean

help:
	@sed -n '2,12p' Makefile | sed 's/^# \{0,1\}//'

# `make setup` always runs the (idempotent) script; `make test`/`make demo` run it only when
# the environment is missing or one of its inputs changed.
setup:
	VENV="$(VENV)" bash scripts/setup_env.sh
	@touch "$(STAMP)"

$(STAMP): $(SETUP_INPUTS)
	VENV="$(VENV)" bash scripts/setup_env.sh
	@touch "$(STAMP)"

test: $(STAMP)
	bash scripts/ensure_fashion_mnist.sh
	"$(PY)" -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	bash scripts/ensure_fashion_mnist.sh
	"$(PY)" -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	"$(VENV)/bin/ruff" check .
	"$(VENV)/bin/ruff" check configs repnas_mm/tools tests scripts --select E501 --line-length 100

demo: $(STAMP)
	bash scripts/ensure_fashion_mnist.sh
	"$(PY)" tools/demo.py $(DEMO_ARGS)

gpu-check: $(STAMP)
	"$(PY)" tools/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf work_dirs .pytest_cache
