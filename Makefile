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

.PHONY: setup book test lint test-package test-notebooks test-browser test-gpu-scale execute clean

# --- set-up -------------------------------------------------------------------------------------------------------
# The virtual environment is (re)installed only when requirements.txt or pyproject.toml changed.
$(VENV)/.stamp-requirements: requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

# llama.cpp (Chapter 7's engine), compiled by pip from its source on every core; only what runs chapters or tests needs
# it, so that `make book` stays quick. pip keeps the built wheel in its cache for the next virtual environment.
$(VENV)/.stamp-llamacpp: requirements-llamacpp.txt $(VENV)/.stamp-requirements
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet -r requirements-llamacpp.txt
	touch $@

# Widget manager, MathJax and the Chinese font, fetched from npm by pinned version (see book/fetch_vendor.sh).
book/_vendor/VERSIONS: book/fetch_vendor.sh
	bash book/fetch_vendor.sh

# The Chinese font cut down to the CJK characters the pages use (a few KB), redone whenever a page changes.
CJK_SOURCES := $(wildcard chapters/*.ipynb book/*.ipynb book/*.md)
book/_vendor/cjk/chars.txt: tools/subset_cjk_font.py $(CJK_SOURCES) book/_vendor/VERSIONS $(VENV)/.stamp-requirements
	$(PY) tools/subset_cjk_font.py $(CJK_SOURCES)

setup: $(VENV)/.stamp-requirements book/_vendor/VERSIONS book/_vendor/cjk/chars.txt

# --- the two commands ---------------------------------------------------------------------------------------------
book: setup
	$(VENV)/bin/jupyter-book build . $(JB_FLAGS)

test: setup $(VENV)/.stamp-llamacpp
	$(MAKE) lint
	$(MAKE) test-package
	$(MAKE) test-notebooks
	$(MAKE) book
	$(MAKE) test-browser

# Lint (ruff's rules in pyproject.toml) and types (mypy over src/llmbook, configured there too).
lint: $(VENV)/.stamp-requirements
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/mypy

test-package: $(VENV)/.stamp-llamacpp
	$(PYTEST) tests --ignore=tests/browser -q

# Every notebook re-executed once and its text outputs compared with the stored ones: words and integers exactly,
# decimals within one unit of their last digit plus the tolerance their cell declares (tests/nbcheck.py).
test-notebooks: $(VENV)/.stamp-llamacpp
	PYTHONPATH=tests $(PYTEST) -p nbcheck --nbcheck $(NOTEBOOKS) -q -p no:cacheprovider

test-browser:
	$(PYTEST) tests/browser -q

# Every chapter at its GPU scale (its models, sequence lengths, batch sizes), end to end on the CPU with every step
# count cut to 2 and every example count to 300 (tools/run_chapters.py prints each chapter's time); the numbers mean
# nothing. Not part of `make test`, which it would lengthen by 15 to 20 minutes.
test-gpu-scale: setup $(VENV)/.stamp-llamacpp
	$(PY) tools/run_chapters.py --scale gpu --max-steps 2 --max-examples 300 --device cpu $(NOTEBOOKS)

# --- maintenance --------------------------------------------------------------------------------------------------
# Re-execute every notebook in place, top to bottom in a fresh kernel, storing outputs and widget state so that a
# re-run of an unchanged notebook changes nothing but its printed timings (tools/execute_notebooks.py).
execute: setup $(VENV)/.stamp-llamacpp
	$(PY) tools/execute_notebooks.py $(NOTEBOOKS)

clean:
	rm -rf _build book/_vendor book/_fonts .pytest_cache .jupyter_cache
