# `make test` and `make bench` create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(VENV)/bin/tlga-bench run --out bench-out

clean:
	rm -rf $(VENV) build *.egg-info
