# Two commands take a fresh machine from nothing to a result:
#   make test    set up .venv, install Chromium for the study page's browser test (Debian), run the test suite
#   make local   set up .venv and run the offline SMART preset (python smart.py config/local.py)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# The browser test of listen.py's study page drives Debian's chromium through chromedriver (root or sudo).
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: setup browser test local

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
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

local: setup
	$(PY) smart.py config/local.py
