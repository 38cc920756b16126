# Two commands take a fresh machine from nothing to a result:
#   make test    set up .venv, install Chromium for the study page's browser test (Debian), run the test suite
#   make local   set up .venv and run the offline SMART preset (python smart.py config/local.py)
# Before a commit, and in CI (.ci/run) before the tests:
#   make lint    ruff check . with the rules in pyproject.toml
# On a GPU box:
#   make setup CUDA=cu126   torch's build for another CUDA version (docs/gpu.md)
#   make gpu-check          the paper's default path at the paper's size with stand-ins: stage times, memory, speedups
#                           (ARGS="--steps 6 --json figures.json" passes options to bench/gpu_check.py)
# For an offline GPU box that brings its own Python and torch (bench/wheelhouse.py says how):
#   make wheelhouse PY=3.12 [FULL=1]      here, with a network: the wheels it needs but torch's, into wheelhouse/
#   make gpu-check WHEELHOUSE=wheelhouse PYTHON=python3    there, with no venv: what its Python lacks is installed
#                           from the wheelhouse into a temporary folder put first on the path, then the check runs
PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
# Empty: PyPI's torch, built for CUDA 13.0 (drivers >= 580, GPUs of compute capability 7.5-12.0). cu126, cu130, cu132,
# cu134 or cpu: torch and torchaudio, at the pinned versions, from that build's PyTorch index.
CUDA ?=
TORCH_INDEX ?= https://download.pytorch.org/whl/$(CUDA)
TORCH_PINS := $(shell grep -E '^torch(audio)?==' requirements.txt | cut -d' ' -f1)

# The browser test of listen.py's study page drives Debian's chromium through chromedriver (root or sudo).
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

# make wheelhouse: PY, the box's Python version (default: $(PYTHON)'s); PLATFORM, its wheel platform tags (default:
# the manylinux x86_64 ones in bench/wheelhouse.py); FULL=1 adds numpy, pandas, pyarrow and matplotlib; OUT, the folder.
PY ?=
PLATFORM ?=
FULL ?=
OUT := wheelhouse
WHEELHOUSE ?=
ARGS ?=

.PHONY: setup browser test lint local gpu-check wheelhouse

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install -q -U pip
	$(if $(CUDA),$(VENV_PYTHON) -m pip install -q --index-url $(TORCH_INDEX) $(TORCH_PINS))
	$(VENV_PYTHON) -m pip install -q -r requirements.txt
	$(VENV_PYTHON) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

test: setup browser
	LISTEN_REQUIRE_BROWSER=1 $(VENV_PYTHON) -m pytest -q tests

lint: setup
	$(VENV_PYTHON) -m ruff check .

local: setup
	$(VENV_PYTHON) smart.py config/local.py

ifeq ($(WHEELHOUSE),)
gpu-check: setup
	$(VENV_PYTHON) bench/gpu_check.py $(ARGS)
else
gpu-check:
	@folder=$$(mktemp -d) && trap 'rm -rf "$$folder"' EXIT && target="$$folder/site-packages" && \
	$(PYTHON) bench/wheelhouse.py install $(WHEELHOUSE) --target "$$target" && \
	PYTHONPATH="$$target$${PYTHONPATH:+:$$PYTHONPATH}" $(PYTHON) bench/gpu_check.py $(ARGS)
endif

wheelhouse:
	$(PYTHON) bench/wheelhouse.py collect --out $(OUT) $(if $(PY),--python $(PY)) $(if $(FULL),--full) \
		$(foreach tag,$(PLATFORM),--platform $(tag))
