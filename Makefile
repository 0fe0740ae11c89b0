# The two commands a newcomer runs on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test bench clean

setup: $(STAMP)

# torch is pinned and installed first (a CPU build on these machines); an unpinned
# torch would pull a multi-GB CUDA stack. constraints.txt keeps every extra (Lightning,
# transformers, ...) from replacing it.
$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,demo]'
	touch $(STAMP)

# Debian ships the full Fashion-MNIST; install it where apt-get is available and it is missing.
data:
	@if [ -d $(FMNIST) ]; then echo "Fashion-MNIST found in $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  ($$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   ($$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
	  || echo "warning: could not install dataset-fashion-mnist; tests that need it are skipped"; \
	else echo "apt-get not available: put Fashion-MNIST idx files in ./data/fashion-mnist"; fi

demo: setup data
	$(BIN)/python -m sparsetrain demo

test: setup data
	$(BIN)/python -m pytest

bench: setup data
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
