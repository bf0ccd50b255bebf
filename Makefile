# One-machine entry points. `make demo` installs and runs the main job; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The demo keeps its model store, runs and logs in ./.fraudops (delete it to start over).
DEMO_HOME ?= $(CURDIR)/.fraudops
export BENTOML_DO_NOT_TRACK := True

.PHONY: install demo test test-fast lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	BENTOML_HOME=$(DEMO_HOME)/bentoml $(BIN)/fraudops pipeline run --local --root $(DEMO_HOME)/runs
	BENTOML_HOME=$(DEMO_HOME)/bentoml $(BIN)/fraudops models list

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/bench_training.py

clean:
	rm -rf $(DEMO_HOME) fraudops-runs catboost_info .pytest_cache
