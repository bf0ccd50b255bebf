# One-machine entry points. `make demo` installs and runs the main job; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The demo keeps its model store, runs, logs and reports in ./.fraudops/demo (replaced on each run).
DEMO_HOME ?= $(CURDIR)/.fraudops
export BENTOML_DO_NOT_TRACK := True

.PHONY: install system-deps demo test test-fast lint bench clean image kind-up kind-e2e kind-reload kind-down

install: $(VENV)/.installed system-deps

# Prometheus, Alertmanager (the embedded loop, rule tests), redis-server (the online feature store of the demo
# and the tests) and shellcheck (script tests), from Debian/Ubuntu.
SYSTEM_TOOLS := prometheus prometheus-alertmanager promtool amtool redis-server shellcheck
system-deps:
	@missing=$$(for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	      prometheus prometheus-alertmanager redis-server shellcheck >/dev/null; \
	  else echo "missing: $$missing; run: sudo apt-get install prometheus prometheus-alertmanager redis-server" \
	    "shellcheck" >&2; \
	    exit 1; fi; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	$(BIN)/fraudops demo --home $(DEMO_HOME)/demo

test: install
	$(BIN)/pytest --durations=20  # the slowest tests, to keep CI within its 30 minutes

test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/bench_training.py

clean:
	rm -rf $(DEMO_HOME) fraudops-runs catboost_info .pytest_cache

# The project image, fraudops:<version>: from the pinned public python image, or without a registry from a base
# made here (IMAGE_BASE=auto|public|offline; scripts/image.sh, which installs Debian's docker.io and debootstrap
# as root when they are missing).
image:
	scripts/image.sh

# A single-node Kubernetes with the chart installed (scripts/kind-up.sh; CLUSTER_PROVIDER=auto|local|kind), its
# end-to-end test, and its removal. Builds are cached under ~/.cache/fraudops. The local provider (root) installs
# the Debian packages it needs (containerd, runc, CNI plugins, nftables, docker.io, debootstrap); Go 1.24+ builds
# the cluster's binaries.
kind-up: install
	scripts/kind-up.sh

kind-e2e: install
	scripts/kind-e2e.sh

# rebuild the project image and roll it out to the running cluster (between two end-to-end runs)
kind-reload:
	scripts/kind-reload.sh

kind-down:
	scripts/kind-down.sh
