# The README's two commands: `make train` and `make test`. Each creates .venv with
# Python 3.11 when missing and installs the pinned requirements once (a stamp file
# named after the requirements' hash skips the install when nothing changed).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
REQS := requirements.txt requirements-dev.txt
STAMP := $(VENV)/.stamp-$(shell cat $(REQS) | sha1sum | cut -c1-12)
ARGS ?=

.PHONY: train test lint venv clean

venv: $(STAMP)

$(STAMP): $(REQS)
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), \
		"Python 3.11 is required, found " + sys.version.split()[0]'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	@rm -f $(VENV)/.stamp-*
	@touch $@

# The main job: EAN on the built-in data, a few minutes on a 2-core CPU.
train: $(STAMP)
	$(PY) run.py --mode=train $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
