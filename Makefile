# Two commands for a fresh machine: `make course` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The exact CPU build that lies on CI's disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: course test env clean-outputs

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest --nbmake --nbmake-timeout=900 --durations=12 tests notebooks

course: $(STAMP)
	$(BIN)/python -m helpers.course --output outputs

clean-outputs:
	rm -rf outputs
