# Quick start: `make demo` and `make test` do all set-up (a .venv with the package installed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

REF_VENV ?= .venv-ref
REF_STAMP := $(REF_VENV)/.installed-stamp

.PHONY: install test test-slow test-ref demo clean

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

# The torch reference venv (open_clip, dall_e) for live parity tests and benchmarks; ~6 GB.
$(REF_STAMP): setup.py
	test -x $(REF_VENV)/bin/python || $(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(REF_VENV)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(REF_VENV)/bin/python -m pip install --quiet open-clip-torch==3.3.0 dall-e==0.1 attrs
	$(REF_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(REF_STAMP)

# Tests that compare against the torch references live (the `torch` marker), full-size included.
test-ref: $(REF_STAMP)
	$(REF_VENV)/bin/python -m pytest -q -m torch $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(PY) -m keras_clip.demo

clean:
	rm -rf $(VENV) build dist *.egg-info
