# Twinline — `make demo` runs the pipeline on the embedded stack; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the suite and the demo need (installed by setup when missing).
APT_PACKAGES := mosquitto

.PHONY: setup demo test lint clean

setup: $(STAMP)

# Re-installs only when the project's dependencies change; safe to run again and again.
$(STAMP): pyproject.toml scripts/setup.sh Makefile
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup.sh $(APT_PACKAGES)
	touch $(STAMP)

demo: setup
	$(BIN)/twin demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check pipeline topologies connectors tests
	$(BIN)/ruff format --check pipeline topologies connectors tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .twin .pytest_cache .mypy_cache .ruff_cache
