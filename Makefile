# kws-ghost developer tasks. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo

.PHONY: install test test-fast lint format demo bench clean

install: $(STAMP)

# torch is pinned here to the CPU wheel this project develops on; the package itself asks only for
# a range (setup.cfg), so users elsewhere keep their own (CUDA) build.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

# a worker per core (pytest-xdist); --dist loadgroup keeps the tests of the trained model on one
# worker, so it is trained once (tests/conftest.py). --durations: the slowest tests in every log,
# so the suite's 15-minute budget is easy to keep
test: install
	$(BIN)/python -m pytest -q -n auto --dist loadgroup --durations=15

# the fast tier: no trained model, few subprocesses (104 s here with a worker per core, 185 s
# without); `make test` is everything
test-fast: install
	$(BIN)/python -m pytest -q -n auto -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" sh scripts/demo.sh $(DEMO)

bench: install
	$(BIN)/python benchmarks/bench_layers.py

clean:
	rm -rf $(VENV) $(DEMO) runs .pytest_cache .ruff_cache *.egg-info
