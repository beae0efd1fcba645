# The README's two commands: `make train` and `make test`. Each creates .venv with
# Python 3.11 when missing and installs the pinned requirements once (stamp files
# named after the requirements' hashes skip the install when nothing changed).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
# Test processes: 3 on a 2-core CPU (each process runs TensorFlow's start-up
# and tf.function tracing, which are single-threaded, for much of its time, and
# tests/conftest.py gives each op one thread); 0 runs the suite in one process.
TEST_WORKERS ?= 3
# `make train` needs only the runtime requirements; `make test` adds the test tools.
hash = $(shell cat $(1) | sha1sum | cut -c1-12)
RUN_STAMP := $(VENV)/.stamp-run-$(call hash,requirements.txt pyproject.toml)
DEV_STAMP := $(VENV)/.stamp-dev-$(call hash,requirements.txt requirements-dev.txt)

.PHONY: train test lint venv clean

venv: $(DEV_STAMP)

$(RUN_STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), \
		"Python 3.11 is required, found " + sys.version.split()[0]'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the pinned requirements into $(VENV) (a few minutes the first time)"
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps \
		--no-build-isolation -e .
	@rm -f $(VENV)/.stamp-run-*
	@touch $@

# Both files in one resolve, so that no test tool moves a pinned runtime package.
$(DEV_STAMP): $(RUN_STAMP) requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	@rm -f $(VENV)/.stamp-dev-*
	@touch $@

# The main job: EAN on the built-in data, a few minutes on a 2-core CPU.
train: $(RUN_STAMP)
	$(PY) run.py --mode=train $(ARGS)

test: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist worksteal $(ARGS)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
