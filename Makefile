# The two commands a newcomer runs on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.base-stamp
DEMO   := $(VENV)/.demo-stamp
TESTS  := $(VENV)/.test-stamp
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test bench clean

# everything a developer needs (the test stack: Lightning, transformers, ...)
setup: $(TESTS)

# torch is pinned and installed first (a CPU build on these machines); an unpinned
# torch would pull a multi-GB CUDA stack. constraints.txt keeps every extra (Lightning,
# transformers, ...) from replacing it.
$(BASE): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	touch $(BASE)

# the demo needs only its own extra (progress lines) and matplotlib for its plots
$(DEMO): $(BASE)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[demo,plot]'
	touch $(DEMO)

$(TESTS): $(BASE)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,demo]'
	touch $(TESTS) $(DEMO)

# Debian ships the full Fashion-MNIST; install it where apt-get is available and it is missing.
data:
	@if [ -d $(FMNIST) ]; then echo "Fashion-MNIST found in $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  ($$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   ($$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
	  || echo "warning: could not install dataset-fashion-mnist; tests that need it are skipped"; \
	else echo "apt-get not available: put Fashion-MNIST idx files in ./data/fashion-mnist"; fi

demo: $(DEMO) data
	$(BIN)/python -m sparsetrain demo

test: $(TESTS) data
	$(BIN)/python -m pytest

bench: $(TESTS) data
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
