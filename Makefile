# scorebeater: `make run` and `make test` are the README's two commands. Both are idempotent:
# they create or reuse .venv, install the pinned dependencies when pyproject.toml or
# constraints.txt changed, and (for tests) install and start the services tests need.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config/scorebeater.toml
STAMP := $(VENV)/.installed

.PHONY: run test check lint typecheck unit bench faults services venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/bootstrap.sh
	scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/scorebeater run --config $(CONFIG)

services:
	scripts/install-services.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check scorebeater tests bench faults
	$(VENV)/bin/ruff format --check scorebeater tests bench faults

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit -q

test: $(STAMP) services lint typecheck
	SCOREBEATER_REQUIRE_SERVICES=1 $(VENV)/bin/pytest -q

check: test

bench: $(STAMP) services
	$(PY) -m bench

faults: $(STAMP) services
	$(PY) -m faults

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
