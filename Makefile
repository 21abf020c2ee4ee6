# Quick start: `make demo` and `make test` do all set-up (a .venv with the package installed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-slow demo clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(PY) -m keras_clip.demo

clean:
	rm -rf $(VENV) build dist *.egg-info
