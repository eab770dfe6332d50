# The whole set-up on a fresh machine is `make demo` or `make test`: each creates .venv and installs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
SCALE ?= 1000000

.PHONY: install demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/openprofile demo --data-dir demo-data

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck unit

# The benchmark harness (bench/README.md): `make bench`, `make bench SCALE=100000`, `make bench SCALE=5000000`.
bench: $(STAMP)
	$(PY) bench/run.py --scale $(SCALE)

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache
