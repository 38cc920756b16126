# Two commands take a fresh machine from nothing to a result:
#   make test    set up .venv, install Chromium for the study page's browser test (Debian), run the test suite
#   make local   set up .venv and run the offline SMART preset (python smart.py config/local.py)
# Before a commit, and in CI (.ci/run) before the tests:
#   make lint    ruff check . with the rules in pyproject.toml
# On a GPU box:
#   make setup CUDA=cu126   torch's build for another CUDA version (docs/gpu.md)
#   make gpu-check          the paper's default path at the paper's size with stand-ins: stage times, memory, speedups
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Empty: PyPI's torch, built for CUDA 13.0 (drivers >= 580, GPUs of compute capability 7.5-12.0). cu126, cu130, cu132,
# cu134 or cpu: torch and torchaudio, at the pinned versions, from that build's PyTorch index.
CUDA ?=
TORCH_INDEX ?= https://download.pytorch.org/whl/$(CUDA)
TORCH_PINS := $(shell grep -E '^torch(audio)?==' requirements.txt | cut -d' ' -f1)

# The browser test of listen.py's study page drives Debian's chromium through chromedriver (root or sudo).
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: setup browser test lint local gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(if $(CUDA),$(PY) -m pip install -q --index-url $(TORCH_INDEX) $(TORCH_PINS))
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

test: setup browser
	LISTEN_REQUIRE_BROWSER=1 $(PY) -m pytest -q tests

lint: setup
	$(PY) -m ruff check .

local: setup
	$(PY) smart.py config/local.py

gpu-check: setup
	$(PY) bench/gpu_check.py
