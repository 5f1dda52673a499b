# Two commands for a fresh machine: `make course` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The exact CPU build that lies on CI's disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: course test test-fast env clean-outputs

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Two pytest workers of one thread each: the toy models are too small for a second thread to speed a
# step by more than a fifth, so two streams side by side (tests/conftest.py splits them) take about 60%
# of one stream at two threads.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST) --dist loadgroup --nbmake --nbmake-timeout=900 --durations=12 tests notebooks

# The inner loop of development: helpers and tiny fixtures, no notebook.
test-fast: $(STAMP)
	$(PYTEST) tests --ignore=tests/course/test_real_branches.py

# Two notebooks side by side at one thread each, for the reason above; 03-07 still run in order (they share
# class images).
course: $(STAMP)
	$(BIN)/python -m helpers.course --output outputs --jobs 2

clean-outputs:
	rm -rf outputs
