# One-machine entry points. `make demo` installs and runs the main job; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The demo keeps its model store, runs, logs and reports in ./.fraudops/demo (replaced on each run).
DEMO_HOME ?= $(CURDIR)/.fraudops
export BENTOML_DO_NOT_TRACK := True

.PHONY: install system-deps demo test test-fast lint bench clean image cluster-deps kind-up kind-e2e kind-reload kind-down

install: $(VENV)/.installed system-deps

# Prometheus, Alertmanager (the embedded loop, rule tests) and shellcheck (script tests), from Debian/Ubuntu.
SYSTEM_TOOLS := prometheus prometheus-alertmanager promtool amtool shellcheck
system-deps:
	@missing=$$(for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	      prometheus prometheus-alertmanager shellcheck >/dev/null; \
	  else echo "missing: $$missing; run: sudo apt-get install prometheus prometheus-alertmanager shellcheck" >&2; \
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
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/bench_training.py

clean:
	rm -rf $(DEMO_HOME) fraudops-runs catboost_info .pytest_cache

# The project image, fraudops:<version>: from the pinned public python image, or without a registry from a base
# made here (IMAGE_BASE=auto|public|offline; scripts/image.sh).
image: cluster-deps
	scripts/image.sh

# What the image and the local cluster need from Debian (as root): a Docker engine started privately, containerd
# and runc for the node, the CNI plugins, nftables (to leave the host's packet filter as it was), debootstrap for
# the offline base image. Go (1.24 or newer, which
# Debian bookworm does not package) builds the cluster's binaries: scripts/local/build.sh checks it.
CLUSTER_TOOLS := dockerd containerd runc iptables nft debootstrap
cluster-deps:
	@missing=$$(for t in $(CLUSTER_TOOLS); do command -v $$t >/dev/null || echo $$t; done; \
	  test -x /usr/lib/cni/bridge || echo containernetworking-plugins); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	      docker.io containerd runc iptables nftables containernetworking-plugins debootstrap >/dev/null; \
	  else echo "missing: $$missing; run: sudo apt-get install docker.io containerd runc iptables \
	    nftables containernetworking-plugins debootstrap" >&2; exit 1; fi; \
	fi

# A single-node Kubernetes with the chart installed (scripts/kind-up.sh; CLUSTER_PROVIDER=auto|local|kind), its
# end-to-end test, and its removal. Builds are cached under ~/.cache/fraudops.
kind-up: install cluster-deps
	scripts/kind-up.sh

kind-e2e: install
	scripts/kind-e2e.sh

# rebuild the project image and roll it out to the running cluster (between two end-to-end runs)
kind-reload:
	scripts/kind-reload.sh

kind-down:
	scripts/kind-down.sh
