# The book's two commands: `make book` builds it, `make test` checks everything. Both set up what they need.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := book

VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
NOTEBOOKS := $(wildcard book/*.ipynb chapters/*.ipynb)
# Strict Sphinx: warnings are errors, missing references are warnings, report them all before failing.
JB_FLAGS := -W -n --keep-going
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup book test test-package test-notebooks test-browser execute clean

# --- set-up -------------------------------------------------------------------------------------------------------
# The virtual environment is (re)installed only when requirements.txt or pyproject.toml changed.
$(VENV)/.stamp-requirements: requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

# Widget manager and MathJax, fetched from npm by pinned version (see book/fetch_vendor.sh).
book/_vendor/VERSIONS: book/fetch_vendor.sh
	bash book/fetch_vendor.sh

setup: $(VENV)/.stamp-requirements book/_vendor/VERSIONS

# --- the two commands ---------------------------------------------------------------------------------------------
book: setup
	$(VENV)/bin/jupyter-book build . $(JB_FLAGS)

test: setup
	$(MAKE) test-package
	$(MAKE) test-notebooks
	$(MAKE) book
	$(MAKE) test-browser

test-package:
	$(PYTEST) tests --ignore=tests/browser -q

# nbval in strict mode: every stored text output must be reproduced.
test-notebooks:
	$(PYTEST) --nbval $(NOTEBOOKS) --nbval-sanitize-with tests/nbval_sanitize.cfg -q -p no:cacheprovider

test-browser:
	$(PYTEST) tests/browser -q

# --- maintenance --------------------------------------------------------------------------------------------------
# Re-execute every notebook in place, top to bottom in a fresh kernel, storing outputs and widget state.
execute: setup
	for nb in $(NOTEBOOKS); do echo "executing $$nb"; $(VENV)/bin/jupyter execute --inplace --timeout=900 "$$nb"; done

clean:
	rm -rf _build book/_vendor .pytest_cache .jupyter_cache
