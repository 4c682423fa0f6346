# The two commands of the README: `make demo` and `make test`. Both bootstrap .venv once.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint reproduce bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch; an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m testbed

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow and not cuda"

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2

lint: $(STAMP)
	$(PY) -m ruff check testbed tests scripts hydra_plugins

reproduce: $(STAMP)
	$(PY) scripts/reproduce.py

bench: $(STAMP)
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) results/runs results/sweeps .pytest_cache
