# Two commands take a fresh machine from nothing to a result:
#   make test    set up .venv and run the test suite
#   make local   set up .venv and run the offline SMART preset (python smart.py config/local.py)
# On a GPU box:
#   make gpu-check   the paper's default path at the paper's size with stand-ins: stage times, memory, speedups
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test local gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

test: setup
	$(PY) -m pytest -q tests

local: setup
	$(PY) smart.py config/local.py

gpu-check: setup
	$(PY) bench/gpu_check.py
